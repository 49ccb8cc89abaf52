"""The extension points of docs/how-it-works.md work as the recipes there say: a new dataset is one
task record plus its reader, a new objective, task-vector transform or method one registry entry,
and nothing else needs an edit (every flag and check reads the registries as they are)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from test_pipeline import _argv, run

from adamerging.datasets import readers
from adamerging.datasets.classnames import FolderNames
from adamerging.datasets.folders import image_folder
from adamerging.datasets.splits import read_split
from adamerging.datasets.tasks import TASKS, Task, canonical_task
from adamerging.merging.task_vectors import is_zero_view
from adamerging.merging.transforms import TRANSFORMS
from adamerging.methods.fixed import FixedTable, scaled
from adamerging.methods.registry import METHODS, Method
from adamerging.models.objectives import OBJECTIVES, Objective
from adamerging.run.config import RunConfig


def read_pets(root, split, test_dir):
    """The recipe's reader: an ImageFolder tree `pets/<split>/<class>/*.png`."""
    folder = root / "pets" / split
    classes, labels, paths = image_folder("Pets", folder, "pets/{train,test}/<class>/*.png")
    return classes, labels, paths, str(folder)


def test_a_new_dataset_is_one_record_plus_its_reader(tmp_path, monkeypatch):
    for c, name in enumerate(["Abyssinian", "basset_hound"]):
        folder = tmp_path / "pets" / "test" / name
        folder.mkdir(parents=True)
        for i in range(2):
            pixels = np.full((8, 8, 3), 40 * c + i, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    record = Task("Pets", "pets", read_pets, FolderNames(), paper_test_size=(4, 4), prompts="dtd")
    monkeypatch.setitem(TASKS, "Pets", record)
    split = read_split("pets", tmp_path)
    assert canonical_task("PETS") == "Pets" and split.classnames == ["Abyssinian", "basset hound"]
    assert split.labels.tolist() == [0, 0, 1, 1] and split.record()["paper_n_images"] == 4
    assert readers.read_dtd is TASKS["DTD"].reader  # the built-in records name their readers


def test_a_new_objective_is_one_entry_and_every_learned_method_takes_it(mini, monkeypatch):
    calls = []

    def confidence(logits, labels):
        calls.append(len(logits))
        return -logits.softmax(dim=1).max(dim=1).values

    monkeypatch.setitem(OBJECTIVES, "confidence", Objective("confidence", confidence))
    assert RunConfig(objective="confidence").objective == "confidence"
    result = run("task_wise_adamerging", _argv(mini, "--steps", "2", "--objective", "confidence"))
    assert calls and result["config"]["objective"] == "confidence"
    with pytest.raises(ValueError, match="must be one of"):
        RunConfig(objective="nonsense")


def test_a_new_transform_and_a_new_method_are_one_entry_each(mini, monkeypatch):
    def halved(tau, settings):  # a transform may overwrite its input
        return {k: t if is_zero_view(t) else t.mul_(0.5) for k, t in tau.items()}

    monkeypatch.setitem(TRANSFORMS, "halved", halved)
    record = Method("halved_ta", "Halved TA", FixedTable(scaled), vectors="halved")
    monkeypatch.setitem(METHODS, "halved_ta", record)
    halved_run = run("halved_ta", _argv(mini, "--lam", "0.6"))
    plain = run("task_arithmetic", _argv(mini, "--lam", "0.3"))
    # theta_0 + 0.6 * tau / 2 is theta_0 + 0.3 * tau
    assert halved_run["accuracy"] == plain["accuracy"]
    assert halved_run["method"] == "halved_ta" and halved_run["title"] == "Halved TA"
    with pytest.raises(ValueError, match="unknown task vectors"):
        dataclasses.replace(record, vectors="nonsense")
