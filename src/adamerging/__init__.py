"""AdaMerging (Yang et al., ICLR 2024) and its baselines for CLIP image encoders."""

import os

# Before torch starts (it reads this once): large CPU tensors on 2 MB transparent huge pages. Every
# AdaMerging step allocates the merged parameters afresh; with 4 KB pages, faulting them in costs
# more CPU than the merge arithmetic (ViT-B/32: ~0.15 s of a ~0.25 s merge). Results are unchanged
# (placement only). Has no effect when torch was imported first; THP_MEM_ALLOC_ENABLE=0 turns it
# off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# must run before anything imports torchvision
from adamerging import _torchvision_compat  # noqa: E402,F401

__version__ = "0.1.0"
