"""Users' own tasks: ImageFolder-style folders (`--task NAME=DIR`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import adamerging  # noqa: F401  (before torchvision: compat shim)
from adamerging.datasets.preprocessing import preprocess_images
from adamerging.datasets.user_tasks import (
    DEFAULT_USER_TEMPLATES,
    read_image_folder_task,
    user_task_templates,
)
from adamerging.runtime.errors import DatasetError


def _write_task(folder: Path, classes: dict[str, int], split: str = "test") -> Path:
    rng = np.random.default_rng(0)
    for cls, n in classes.items():
        (folder / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / split / cls / f"img_{i}.png")
    return folder


def test_image_folder_task_reads_classes_labels_and_paths(tmp_path: Path):
    folder = _write_task(tmp_path / "pets", {"tabby_cat": 2, "dog": 3, "axolotl": 1})
    (folder / "test" / "dog" / "notes.txt").write_text("not an image")
    split = read_image_folder_task("Pets", folder)
    assert split.task == "Pets" and split.split == "test"
    assert split.classnames == ["axolotl", "dog", "tabby cat"]  # sorted folders, `_` -> space
    assert split.labels.tolist() == [0, 1, 1, 1, 2, 2]
    assert split.labels.dtype == np.int64
    assert [Path(p).parent.name for p in split.images] == ["axolotl"] + ["dog"] * 3 + [
        "tabby_cat"
    ] * 2
    images = preprocess_images(split, 16, tmp_path / "cache", num_workers=1)
    assert tuple(images.shape) == (6, 3, 16, 16)
    assert user_task_templates(folder) == list(DEFAULT_USER_TEMPLATES)
    assert all("{c}" in t for t in DEFAULT_USER_TEMPLATES)


def test_classnames_and_templates_files_override(tmp_path: Path):
    folder = _write_task(tmp_path / "t", {"c0": 1, "c1": 1})
    (folder / "classnames.txt").write_text("zero\none\n")
    (folder / "templates.txt").write_text("a sketch of {c}.\nitap of a {c}.\n")
    split = read_image_folder_task("T", folder)
    assert split.classnames == ["zero", "one"]
    assert user_task_templates(folder) == ["a sketch of {c}.", "itap of a {c}."]


def test_other_split_names_work(tmp_path: Path):
    folder = _write_task(tmp_path / "t", {"a": 1, "b": 2}, split="val")
    assert len(read_image_folder_task("T", folder, split="val")) == 3


def test_errors_name_the_expected_layout(tmp_path: Path):
    for bad in ("", "a/b", "x=y", ".hidden", "two words"):
        with pytest.raises(DatasetError, match="task name"):
            read_image_folder_task(bad, tmp_path)
    with pytest.raises(DatasetError, match=r"Mine: expected .*/nothing/test .*ImageFolder"):
        read_image_folder_task("Mine", tmp_path / "nothing")
    folder = _write_task(tmp_path / "t", {"a": 1, "b": 1})
    (folder / "classnames.txt").write_text("only one\n")
    with pytest.raises(DatasetError, match="2 class folders but .*classnames.txt has 1 names"):
        read_image_folder_task("T", folder)
    (folder / "templates.txt").write_text("a photo of a {c}.\nno placeholder\n")
    with pytest.raises(DatasetError, match="placeholder"):
        user_task_templates(folder)
    (folder / "test" / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no image files"):
        read_image_folder_task("T", folder)
