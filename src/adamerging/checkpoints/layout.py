"""Where a checkpoint lies and in which format: the one place that decides between the
task-vectors files (`<stem>.pt`, `.safetensors`, `.bin`: a pickled module or a state dict) and
Hugging Face CLIP folders (`<stem>/` with config.json and the weights), and reads either.

`find_checkpoint(folder, stem, fmt)` looks for one (`fmt`: "auto", "task-vectors" or "hf", the
`--checkpoint-format` choices); `Checkpoint(path)` is one found; `.read()` gives its state dict in
the file's own keys and its format for the record; `.open_clip_weights(reference, fill)` gives it in
open_clip's keys, a Hugging Face folder's converted (`hf.image_tower`), with the entries it lacks
taken from `fill`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from adamerging.checkpoints import hf
from adamerging.checkpoints.hashing import checkpoint_format
from adamerging.checkpoints.loading import load_checkpoint

FORMATS = ("auto", "task-vectors", "hf")
SUFFIXES = (".pt", ".safetensors", ".bin")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: a task-vectors file, or a Hugging Face folder (`is_folder`)."""

    path: Path

    @property
    def is_folder(self) -> bool:
        """A Hugging Face folder (config.json + weights), not a single file."""
        return hf.is_hf_checkpoint(self.path)

    @property
    def weights_file(self) -> Path:
        """The file holding the weights (a Hugging Face folder's weights file): what is hashed."""
        return hf.weights_file(self.path) if self.path.is_dir() else self.path

    def read(self) -> tuple[dict[str, torch.Tensor], str]:
        """The state dict in the file's own keys, and its format for the record
        (`hashing.checkpoint_format`). CheckpointError (one line) for an unreadable file."""
        if self.is_folder:
            return hf.load_hf_checkpoint(self.path), checkpoint_format(self.path, "hf")
        loaded = load_checkpoint(self.path)
        return loaded.state_dict, checkpoint_format(self.path, loaded.kind)

    def open_clip_weights(
        self,
        weights: dict[str, torch.Tensor],
        reference: Mapping[str, torch.Tensor],
        text_side_from: Mapping[str, torch.Tensor],
        complete: bool = True,
    ) -> dict[str, torch.Tensor]:
        """`weights` (as `read` gave them) in open_clip's keys. A Hugging Face folder's are
        converted onto `reference` (an open_clip CLIP's state dict), a text tower of another shape
        replaced by `text_side_from`'s entries (ImageEncoder `model.*` keys; `hf.image_tower`), and
        with `complete` the entries a vision-only folder lacks taken from it too (`hf.fill_from`);
        a task-vectors file's are returned as they are."""
        if not self.is_folder:
            return weights
        weights = hf.image_tower(weights, dict(reference), self.path, text_side_from)
        return hf.fill_from(weights, text_side_from) if complete else weights


def find_checkpoint(folder: str | Path, stem: str, fmt: str = "auto") -> Checkpoint | None:
    """`folder/<stem>.{pt,safetensors,bin}` (task-vectors layout) or the Hugging Face folder
    `folder/<stem>/`, as `fmt` allows; None where neither is there."""
    folder = Path(folder)
    if fmt != "hf":
        for suffix in SUFFIXES:
            if (folder / (stem + suffix)).is_file():
                return Checkpoint(folder / (stem + suffix))
    if fmt != "task-vectors" and hf.is_hf_checkpoint(folder / stem):
        return Checkpoint(folder / stem)
    return None
