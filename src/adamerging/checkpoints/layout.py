"""Where a checkpoint lies and in which format: the one place that decides between the
task-vectors files (`<stem>.pt`, `.safetensors`, `.bin`) and Hugging Face folders (`<stem>/` with
config.json), and reads either into a state dict."""

from __future__ import annotations

from pathlib import Path

import torch

from adamerging.checkpoints import hf
from adamerging.checkpoints.hashing import checkpoint_format
from adamerging.checkpoints.loading import load_checkpoint


def _find(folder: Path, stem: str, fmt: str = "auto") -> Path | None:
    """`folder/stem.{pt,safetensors,bin}` (task-vectors layout) or the HF folder `folder/stem/`."""
    if fmt != "hf":
        for suffix in (".pt", ".safetensors", ".bin"):
            if (folder / (stem + suffix)).is_file():
                return folder / (stem + suffix)
    if fmt != "task-vectors" and hf.is_hf_checkpoint(folder / stem):
        return folder / stem
    return None


def _read(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A checkpoint's state dict (`hf.load_weights`) and its format for the record
    (`hashing.checkpoint_format`)."""
    if hf.is_hf_checkpoint(path):
        return hf.load_hf_checkpoint(path), checkpoint_format(path, "hf")
    loaded = load_checkpoint(path)
    return loaded.state_dict, checkpoint_format(path, loaded.kind)


def _content(path: Path) -> Path:
    """The file holding a checkpoint's weights (a Hugging Face folder's weights file)."""
    return hf.weights_file(path) if path.is_dir() else path
