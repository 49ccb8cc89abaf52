"""Let `import torchvision` (and so `import open_clip`) work on CPU-only torch builds.

The only torchvision wheel that matches torch 2.13.0 here is a CUDA build. Its compiled extension
(`torchvision/_C.so`) cannot load against a CPU torch, and torchvision's import then fails inside
`_meta_registrations.py` with "operator torchvision::nms does not exist", because it registers fake
kernels for two ops whose schemas the extension would have defined. We try to load the extension
ourselves first; only when that fails do we define the two schemas (no kernels), so the import
succeeds and everything except those detection ops works. Where torchvision works, this does nothing.
"""
from __future__ import annotations

import importlib.util
import os

import torch

_LIBRARY = None  # keeps the schema definitions alive for the life of the process


def _extension_path() -> str | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = spec.submodule_search_locations[0]
    for name in os.listdir(folder):
        if name.startswith("_C.") and name.endswith((".so", ".pyd")):
            return os.path.join(folder, name)
    return None


def _op_defined(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def ensure_torchvision_importable() -> None:
    """Define `torchvision::nms` / `torchvision::qnms` if torchvision's extension cannot load."""
    global _LIBRARY
    if _LIBRARY is not None or _op_defined("nms"):
        return
    path = _extension_path()
    if path is not None:
        try:
            torch.ops.load_library(path)
            return
        except (OSError, RuntimeError, ImportError):
            pass
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")


ensure_torchvision_importable()
