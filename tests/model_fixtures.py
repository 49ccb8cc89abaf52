"""Random-weight checkpoints in the real task-vectors layout (the files the public release has)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from fixture_cache import cached_build

from adamerging.checkpoints.loading import save_state_dict
from adamerging.models.clip import create_clip
from adamerging.models.task_vectors_format import save_classification_head, save_image_encoder


def _perturbed(clip: torch.nn.Module, model: str, scale: float) -> torch.nn.Module:
    """A copy of `clip` with noise (torch's global generator) on the visual tower: a random-weight
    expert."""
    expert = create_clip(model)
    expert.load_state_dict(clip.state_dict())
    with torch.no_grad():
        for p in expert.visual.parameters():
            p.add_(scale * p.abs().mean() * torch.randn_like(p))
    return expert


def write_random_checkpoints(
    root: Path,
    model: str,
    classes: Mapping[str, int],
    heads: Mapping[str, bool] | None = None,
    scale: float = 0.05,
    seed: int = 0,
    multitask: bool = False,
) -> Path:
    """<root>/<model>/zeroshot.pt, <Task>/finetuned.pt (theta_0 + noise), head_<Task>.pt where
    heads[task] is true (others must be built from clip_pretrained.safetensors, also written), and
    with `multitask` a multitask/finetuned.pt (theta_0 + noise: the "Traditional MTL" encoder's
    place). The mini model's are built once per session for the same arguments, then copied
    (`fixture_cache`).
    """
    key = (
        "checkpoints",
        model,
        dict(classes),
        dict(heads or {}),
        heads is None,
        scale,
        seed,
        multitask,
    )

    def build(root: Path) -> None:
        _write_random_checkpoints(root, model, classes, heads, scale, seed, multitask)

    if model != "mini":  # full-size models: writing them again costs less than a copy kept
        build(Path(root))
        return Path(root) / model
    cached_build(key, Path(root), [model], build)
    return Path(root) / model


def _write_random_checkpoints(
    root: Path,
    model: str,
    classes: Mapping[str, int],
    heads: Mapping[str, bool] | None = None,
    scale: float = 0.05,
    seed: int = 0,
    multitask: bool = False,
) -> Path:
    """<root>/<model>/zeroshot.pt, <Task>/finetuned.pt (theta_0 + noise), head_<Task>.pt where
    heads[task] is true (others must be built from clip_pretrained.safetensors, also written), and
    with `multitask` a multitask/finetuned.pt (theta_0 + noise: the "Traditional MTL" encoder's
    place).
    """
    torch.manual_seed(seed)
    folder = Path(root) / model
    clip = create_clip(model)
    save_state_dict(clip.state_dict(), folder / "clip_pretrained.safetensors")
    save_image_encoder(clip, folder / "zeroshot.pt")
    for task, num_classes in classes.items():
        save_image_encoder(_perturbed(clip, model, scale), folder / task / "finetuned.pt")
        if heads is None or heads.get(task, True):
            weight = (
                torch.nn.functional.normalize(
                    torch.randn(num_classes, clip.visual.output_dim), dim=1
                )
                * 100
            )
            save_classification_head(weight, folder / f"head_{task}.pt")
    if multitask:
        save_image_encoder(_perturbed(clip, model, scale), folder / "multitask" / "finetuned.pt")
    return folder


MINI_TASKS = {"MNIST": 10, "SVHN": 10, "EuroSAT": 10}


def write_mini_problem(root: Path, n_per_class: int = 3) -> Path:
    """Random-weight `mini` checkpoints (with a multi-task encoder) and fake data (test and train
    splits) for MNIST, SVHN, EuroSAT under `root`. EuroSAT has no head file, so its head is built
    from the text tower."""
    from fake_data import write_fake_dataset

    def build(root: Path) -> None:
        write_random_checkpoints(
            root / "checkpoints", "mini", MINI_TASKS, heads={"EuroSAT": False}, multitask=True
        )
        for task in MINI_TASKS:
            write_fake_dataset(
                task, root / "data", n_per_class=n_per_class, image_size=8, split="both"
            )

    cached_build(("mini problem", n_per_class), Path(root), ["checkpoints", "data"], build)
    return root


def mini_argv(root: Path, *extra: str, tasks: str = "MNIST,SVHN,EuroSAT") -> list[str]:
    """Pipeline flags pointing at a `write_mini_problem` folder, on the CPU (where the pinned
    numbers were made, also on a machine with a GPU; a later --device in `extra` wins)."""
    return [
        "--model",
        "mini",
        "--checkpoints",
        str(root / "checkpoints"),
        "--data-location",
        str(root / "data"),
        "--results-dir",
        str(root / "results"),
        "--tasks",
        tasks,
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]
