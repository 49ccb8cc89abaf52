"""`python -m adamerging prepare`: fake official downloads -> reader layouts, counts, atomicity."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path

import pytest

import adamerging  # noqa: F401
from adamerging.datasets import prepare

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_data import read_expected  # noqa: E402
from fake_downloads import write_fake_downloads  # noqa: E402

from adamerging.datasets import preparers
from adamerging.datasets.splits import read_split
from adamerging.datasets.tasks import PAPER_TASKS, TASKS, paper_size_text


def _prepared(task: str, tmp_path: Path, **kw) -> tuple[dict, Path, int]:
    info = write_fake_downloads(task, tmp_path / "downloads", tmp_path / "scratch", **kw)
    data = tmp_path / "data"
    with pytest.warns(
        UserWarning, match=rf"^{task}: \d+ test images, the paper used {paper_size_text(task)}"
    ):
        n = prepare.prepare_task(task, tmp_path / "downloads", data)
    return info, data, n


def _no_leftovers(data: Path) -> None:
    assert not [p.name for p in data.iterdir() if p.name.startswith(".prepare-")]


@pytest.mark.parametrize("task", [t for t in PAPER_TASKS if t != "EuroSAT"])
def test_official_downloads_become_the_reader_layout(tmp_path: Path, task: str) -> None:
    info, data, n = _prepared(task, tmp_path)
    for split in ("test", "train"):
        got = read_split(task, data, split)
        want = read_expected(task, info["root"], split)
        # train1 + val1 of the archive: the same images, renamed
        if task == "DTD" and split == "train":
            assert sorted(got.labels.tolist()) == sorted(want["labels"])
            continue
        assert got.labels.tolist() == want["labels"] and got.classnames == want["classnames"], split
        assert len(got) == want["n"]
    assert n == read_expected(task, info["root"], "test")["n"]
    _no_leftovers(data)


def test_kaggle_cars_nesting(tmp_path: Path) -> None:
    info, data, n = _prepared("Cars", tmp_path, kaggle=True)
    assert (data / "stanford_cars" / "cars_test").is_dir() and not (
        data / "stanford_cars" / "cars_test" / "cars_test"
    ).exists()
    assert read_split("Cars", data).labels.tolist() == read_expected("Cars", info["root"])["labels"]


def test_eurosat_split_sizes_and_disjointness(tmp_path: Path) -> None:
    info, data, n = _prepared("EuroSAT", tmp_path)
    counts = info["counts"]
    assert n == sum(c // 10 for c in counts.values())
    members = {}
    for split in ("train", "val", "test"):
        s = (
            read_split("EuroSAT", data, "test", test_dir=split)
            if split != "train"
            else read_split("EuroSAT", data, "train")
        )
        members[split] = {Path(p).name for p in s.images}
    assert sum(len(v) for v in members.values()) == sum(counts.values())
    assert not (members["train"] & members["test"]) and not (members["val"] & members["test"])
    # 27,000 real images (3000 / 2500 / 2000 per class) give exactly the paper's 2,700.
    real = {
        f"C{i}": [f"{i}_{k}.jpg" for k in range(c)]
        for i, c in enumerate([3000] * 5 + [2500] * 4 + [2000])
    }
    sizes = {
        s: sum(len(v) for v in per.values()) for s, per in preparers.eurosat_split(real).items()
    }
    assert sizes == {"train": 21600, "val": 2700, "test": 2700}
    assert preparers.eurosat_split(real) == preparers.eurosat_split(real)  # seeded


def test_failure_leaves_no_task_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_downloads("DTD", tmp_path / "downloads", tmp_path / "scratch")
    data = tmp_path / "data"
    real = TASKS["DTD"].prepare

    def interrupted(inp, out):
        real(inp, out)  # everything written ...
        raise KeyboardInterrupt  # ... then Ctrl-C before the rename

    monkeypatch.setitem(TASKS, "DTD", dataclasses.replace(TASKS["DTD"], prepare=interrupted))
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_task("DTD", tmp_path / "downloads", data)
    assert not (data / "dtd").exists()
    _no_leftovers(data)


def test_missing_download_is_named_and_nothing_written(tmp_path: Path) -> None:
    write_fake_downloads("RESISC45", tmp_path / "downloads", tmp_path / "scratch")
    (tmp_path / "downloads" / "resisc45-test.txt").unlink()
    data = tmp_path / "data"
    with pytest.raises(
        preparers.PrepareError, match=r"RESISC45: expected resisc45-test.txt in .*downloads"
    ):
        prepare.prepare_task("RESISC45", tmp_path / "downloads", data)
    assert not (data / "resisc45").exists()
    _no_leftovers(data)


def test_existing_folder_needs_overwrite(tmp_path: Path) -> None:
    write_fake_downloads("SVHN", tmp_path / "downloads", tmp_path / "scratch")
    data = tmp_path / "data"
    (data / "svhn").mkdir(parents=True)
    (data / "svhn" / "mine.txt").write_text("keep")
    with pytest.raises(preparers.PrepareError, match="already exists"):
        prepare.prepare_task("SVHN", tmp_path / "downloads", data)
    assert (data / "svhn" / "mine.txt").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare.prepare_task("SVHN", tmp_path / "downloads", data, overwrite=True)
    assert (
        not (data / "svhn" / "mine.txt").exists() and (data / "svhn" / "test_32x32.mat").is_file()
    )
    _no_leftovers(data)


def test_cli_prints_counts_and_warns_per_task(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_fake_downloads("MNIST", tmp_path / "downloads", tmp_path / "scratch")
    rc = prepare.main(
        [
            "MNIST,SVHN",
            "--downloads",
            str(tmp_path / "downloads"),
            "--data-location",
            str(tmp_path / "data"),
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1  # SVHN's files are missing
    assert "MNIST" in out and "test images (paper: 10000)" in out and "WARNING: MNIST:" in out
    assert "SVHN: expected test_32x32.mat" in err
    assert (tmp_path / "data" / "MNIST" / "raw").is_dir() and not (
        tmp_path / "data" / "svhn"
    ).exists()
