"""Let `import torchvision` (and so `import open_clip`) work where torchvision's compiled ops cannot
load.

A torchvision wheel built for CUDA, installed beside a CPU-only torch (the only torchvision that
matches torch 2.13.0 on PyPI is such a build), cannot load its compiled extension; its import then
fails inside `_meta_registrations.py` with "operator torchvision::nms does not exist", because it
registers fake kernels for two ops whose schemas the extension would have defined. So torchvision is
imported here first, as it is: where that works (any matching torchvision, whatever its extension's
file is called), nothing else happens. Only on that one error are the two schemas defined (no
kernels), the half-imported modules dropped and the import repeated; everything except those
detection ops then works.
"""

from __future__ import annotations

import sys

import torch

_LIBRARY = None  # keeps the schema definitions alive for the life of the process
_MISSING_OP = "torchvision::nms"


def ensure_torchvision_importable() -> None:
    """Import torchvision; define `torchvision::nms` / `torchvision::qnms` first if its extension
    cannot load.

    Any other import error (torchvision absent, a broken install) is left for the importer to meet.
    """
    global _LIBRARY
    if _LIBRARY is not None:
        return
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as e:
        if _MISSING_OP not in str(e):
            raise
    except ImportError:
        return
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import's half-initialised modules
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401,F811


ensure_torchvision_importable()
