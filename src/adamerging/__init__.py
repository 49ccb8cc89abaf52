"""AdaMerging (Yang et al., ICLR 2024) and its baselines for CLIP image encoders."""
from . import _torchvision_compat  # noqa: F401  (must run before anything imports torchvision)

__version__ = "0.1.0"
