"""The committed artefacts of the mini benchmark: the pretrained base and the experts' task
vectors.

Pretraining the tiny CLIP is the slow (about 12 minutes on one core) and machine-dependent part of
the build: float32 sums run in a different order on another CPU or thread count, and 2,000
optimiser steps amplify the last-bit differences into different weights. So the base and the
experts are committed here, as the project's own build produced them (`python -m
adamerging.mini.build --rebuild` regenerates them from scratch), and the default build only draws
the data, loads these files and writes the checkpoints:

    base_visual.safetensors   the image tower, float32 (theta_0's visual entries)
    base_text.safetensors     the text side, float32; of the 49,408 x 128 token embedding only the
                              rows of tokens that some caption or prompt uses are stored
                              (`token_ids`, `token_rows`); every other row is zero in the base
                              (they never receive a gradient and never enter any computation;
                              zeroing them keeps the files small)
    tau_<Task>.safetensors    each expert's visual task vector (fine-tuned minus pretrained),
                              float16: the expert is theta_0 + tau in float32 (the rounding is part
                              of the expert's definition, so every machine gets the same expert)
    manifest.json             settings hashes, sha256 and size of every file, and how they were made

Errors: `ArtefactError` (one line naming the file and what is wrong) when a file is missing, altered
or does not fit the `mini` architecture.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable
from pathlib import Path

import torch

from adamerging.checkpoints.loading import save_state_dict
from adamerging.runtime.files import atomic_write

ARTEFACT_DIR = Path(__file__).with_name("artefacts")
MANIFEST = "manifest.json"
MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_TOTAL_BYTES = 20 * 1024 * 1024


class ArtefactError(Exception):
    """A committed mini-benchmark artefact is missing, altered or does not fit the architecture."""


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def used_token_ids(tokenizer, texts: Iterable[str]) -> torch.Tensor:
    """Sorted unique token ids [K] (int64) that tokenizing `texts` produces, padding id 0
    included."""
    ids = tokenizer(sorted(set(texts)))
    return torch.unique(ids.flatten())


def prune_token_embedding(clip: torch.nn.Module, token_ids: torch.Tensor) -> None:
    """Zero, in place, every token-embedding row of `clip` outside `token_ids` (rows no text ever
    reads)."""
    with torch.no_grad():
        keep = torch.zeros(clip.token_embedding.weight.shape[0], dtype=torch.bool)
        keep[token_ids] = True
        clip.token_embedding.weight[~keep] = 0.0


def save_base(
    clip: torch.nn.Module, token_ids: torch.Tensor, folder: Path = ARTEFACT_DIR
) -> list[Path]:
    """Write the pretrained `clip` (token rows outside `token_ids` must already be zero) as
    base_visual / base_text safetensors in `folder`; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = clip.state_dict()
    visual = {k: v for k, v in sd.items() if k.startswith("visual.")}
    text = {
        k: v for k, v in sd.items() if not k.startswith("visual.") and k != "token_embedding.weight"
    }
    text["token_ids"] = token_ids.to(torch.int64)
    text["token_rows"] = sd["token_embedding.weight"][token_ids]
    paths = [folder / "base_visual.safetensors", folder / "base_text.safetensors"]
    save_state_dict(visual, paths[0])
    save_state_dict(text, paths[1])
    return paths


def load_base(clip: torch.nn.Module, folder: Path = ARTEFACT_DIR) -> torch.nn.Module:
    """Load the committed base into `clip` (a fresh `clip.create_clip("mini")`), in place; returns
    it. Raises ArtefactError naming the file when a key or shape does not fit."""
    from safetensors.torch import load_file

    sd = {}
    for name in ("base_visual.safetensors", "base_text.safetensors"):
        path = folder / name
        if not path.exists():
            raise ArtefactError(
                f"{path}: missing; run `python -m adamerging.mini.build --rebuild` to regenerate it"
            )
        sd.update(load_file(str(path)))
    ids, rows = sd.pop("token_ids", None), sd.pop("token_rows", None)
    if ids is None or rows is None:
        raise ArtefactError(
            f"{folder / 'base_text.safetensors'}: no token_ids / token_rows entries"
        )
    emb = torch.zeros_like(clip.token_embedding.weight)
    emb[ids] = rows
    sd["token_embedding.weight"] = emb
    try:
        clip.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ArtefactError(
            f"{folder}: the base does not fit the mini architecture: {str(e).splitlines()[0]}"
        ) from e
    clip.eval()
    return clip


def tau_path(task: str, folder: Path = ARTEFACT_DIR) -> Path:
    """Where the committed task vector of `task` lives."""
    return folder / f"tau_{task}.safetensors"


def save_task_vector(tau: dict[str, torch.Tensor], task: str, folder: Path = ARTEFACT_DIR) -> Path:
    """Write a visual task vector {entry: float tensor} as float16 safetensors; returns the path."""
    path = tau_path(task, folder)
    save_state_dict({k: v.to(torch.float16) for k, v in tau.items()}, path)
    return path


def round_task_vector(tau: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The task vector as stored: each entry rounded to float16 and back to float32."""
    return {k: v.to(torch.float16).to(torch.float32) for k, v in tau.items()}


def load_task_vector(task: str, folder: Path = ARTEFACT_DIR) -> dict[str, torch.Tensor]:
    """The committed visual task vector of `task` as float32 {entry: tensor}."""
    from safetensors.torch import load_file

    path = tau_path(task, folder)
    if not path.exists():
        raise ArtefactError(
            f"{path}: missing; run `python -m adamerging.mini.build --rebuild` to regenerate it"
        )
    return {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}


def read_manifest(folder: Path = ARTEFACT_DIR) -> dict:
    """The manifest ({} when there is none)."""
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def _files(folder: Path) -> dict:
    return {
        p.name: dict(sha256=sha256(p), bytes=p.stat().st_size)
        for p in sorted(folder.glob("*.safetensors"))
    }


def made_with() -> dict:
    """The torch version and machine that make artefacts now."""
    return dict(torch=torch.__version__, machine=platform.machine(), processor=_cpu_name())


def _write(folder: Path, manifest: dict) -> dict:
    with atomic_write(folder / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def write_manifest(folder: Path, info: dict) -> dict:
    """Write manifest.json: `info` plus sha256 and size of every *.safetensors file in `folder`."""
    return _write(folder, dict(info, files=_files(folder), made_with=made_with()))


def add_to_manifest(folder: Path, info: dict) -> dict:
    """The manifest with `info` added and every file's sha256 and size recomputed; what it says
    about how the earlier files were made is kept."""
    return _write(folder, dict(read_manifest(folder), **info, files=_files(folder)))


def verify(folder: Path = ARTEFACT_DIR) -> list[str]:
    """Problems with the committed files (missing, altered, over the size limits); [] when all is
    well."""
    manifest = read_manifest(folder)
    if not manifest:
        return [f"{folder / MANIFEST}: missing"]
    problems, total = [], 0
    for name, rec in manifest["files"].items():
        path = folder / name
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        total += size
        if sha256(path) != rec["sha256"]:
            problems.append(f"{path}: sha256 differs from {MANIFEST}")
        if size > MAX_FILE_BYTES:
            problems.append(f"{path}: {size} bytes > {MAX_FILE_BYTES}")
    if total > MAX_TOTAL_BYTES:
        problems.append(f"{folder}: {total} bytes in all > {MAX_TOTAL_BYTES}")
    return problems


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
