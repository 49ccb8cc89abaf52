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

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from adamerging.checkpoints import hf
from adamerging.checkpoints.hashing import checkpoint_format
from adamerging.checkpoints.hf_keys import has_hf_keys, hf_to_open_clip
from adamerging.checkpoints.loading import load_checkpoint

log = logging.getLogger(__name__)

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
        """The state dict (open_clip keys for a Hugging Face folder, else the file's own), and its
        format for the record (`hashing.checkpoint_format`). A single file holding Hugging Face CLIP
        keys (a bare model.safetensors or pytorch_model.bin) is converted like a folder, with the
        config.json beside it if there is one. CheckpointError (one line) for an unreadable file."""
        if self.is_folder:
            return hf.load_hf_checkpoint(self.path), checkpoint_format(self.path, "hf")
        loaded = load_checkpoint(self.path)
        if has_hf_keys(loaded.state_dict):
            config = self.path.parent / hf.CONFIG_FILE
            converted = hf_to_open_clip(
                loaded.state_dict, hf.read_hf_config(self.path.parent) if config.is_file() else None
            )
            log.info("%s: Hugging Face CLIP keys in a single file; converted", self.path)
            return converted, checkpoint_format(self.path, "hf keys")
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
        if not self.is_folder and not _image_tower_only(weights):
            return weights
        weights = hf.image_tower(weights, dict(reference), self.path, text_side_from)
        return hf.fill_from(weights, text_side_from) if complete else weights


def _image_tower_only(weights: Mapping[str, torch.Tensor]) -> bool:
    """open_clip `visual.*` entries without a text tower: a converted vision model's (Hugging Face
    keys in a single file), completed from theta_0 like a vision-only folder's."""
    return any(k.startswith("visual.") for k in weights) and not any(
        k.startswith(("transformer.", "token_embedding")) for k in weights
    )


def other_layout(folder: str | Path, stem: str, fmt: str) -> str:
    """Where `find_checkpoint` found nothing under `--checkpoint-format fmt`: what the other layout
    has there, as the end of a sentence ("" when nothing)."""
    if fmt == "auto":
        return ""
    found = find_checkpoint(folder, stem, "auto")
    if found is None:
        return ""
    kind = "a Hugging Face folder" if found.is_folder else "a task-vectors file"
    return (
        f"; there is {kind} {found.path}, which --checkpoint-format {fmt} excludes: drop the flag"
        " (auto) or pass the layout on disk"
    )


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
