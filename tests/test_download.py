"""`python -m adamerging download`: the plan and the failure modes, with the hub call mocked (no
network)."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest

from adamerging.datasets import download
from adamerging.datasets.tasks import PAPER_TASKS


def test_plan_maps_repos_to_the_reader_layouts(tmp_path: Path) -> None:
    items = download.plan("ViT-B-32", ["Cars", "SVHN"], tmp_path / "ck", tmp_path / "data")
    got = {(i.repo_type, i.repo_id): i.target.relative_to(tmp_path).as_posix() for i in items}
    assert got == {
        ("model", "openai/clip-vit-base-patch32"): "ck/hf/ViT-B-32/zeroshot",
        ("model", "tanganke/clip-vit-base-patch32_stanford-cars"): "ck/hf/ViT-B-32/Cars/finetuned",
        ("model", "tanganke/clip-vit-base-patch32_svhn"): "ck/hf/ViT-B-32/SVHN/finetuned",
        ("dataset", "tanganke/stanford_cars"): "data/stanford_cars",
        ("dataset", "ufldl-stanford/svhn"): "data/svhn",
    }
    svhn = next(i for i in items if i.repo_id == "ufldl-stanford/svhn")
    # not full_numbers; the train split for Fisher merging and RegMean unless only the test split is
    # asked for
    assert svhn.allow_patterns == (
        "README.md",
        "cropped_digits/test-*.parquet",
        "cropped_digits/train-*.parquet",
    )
    only_test = download.plan("ViT-B-32", ["SVHN", "MNIST"], "ck", "data", ("test",))
    assert [i.allow_patterns for i in only_test if i.repo_type == "dataset"] == [
        ("README.md", "cropped_digits/test-*.parquet"),
        ("README.md", "*test-*.parquet"),
    ]
    assert len(download.plan("ViT-L-14", list(PAPER_TASKS), "c", "d")) == 17
    assert (
        download.plan("ViT-L-14", ["DTD"], "c", "d")[1].repo_id
        == "tanganke/clip-vit-large-patch14_dtd"
    )


def test_offline_error_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    calls = []

    def unreachable(repo_id, **kw):
        calls.append(repo_id)
        Path(kw["local_dir"]).mkdir(parents=True, exist_ok=True)
        Path(kw["local_dir"], "config.json").write_text("{}")  # a partial download ...
        raise huggingface_hub.errors.LocalEntryNotFoundError(
            "Cannot reach https://huggingface.co\nmore text"
        )

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    rc = download.main(
        [
            "--source",
            "hf",
            "--model",
            "ViT-B-32",
            "--tasks",
            "MNIST",
            "--checkpoints",
            str(tmp_path / "ck"),
            "--data-location",
            str(tmp_path / "data"),
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and calls == ["openai/clip-vit-base-patch32"]
    assert err.startswith(
        "error: no network / hub unreachable: model openai/clip-vit-base-patch32:"
        " LocalEntryNotFoundError"
    )
    assert err.count("\n") == 1
    assert not (tmp_path / "ck" / "hf" / "ViT-B-32" / "zeroshot").exists()  # ... is never in place
    assert not (tmp_path / "data").exists()


def test_download_moves_complete_repos_into_place(tmp_path: Path, monkeypatch, capsys) -> None:
    def fake(repo_id, repo_type=None, local_dir=None, allow_patterns=None, **kw):
        local = Path(local_dir)
        (local / ".cache").mkdir(parents=True, exist_ok=True)
        if repo_type == "model":
            (local / "config.json").write_text("{}")
            (local / "model.safetensors").write_bytes(b"0")
        else:
            (local / "README.md").write_text("---\n---\n")
            (local / "mnist").mkdir()
            (local / "mnist" / "test-00000-of-00001.parquet").write_bytes(b"0")
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    args = [
        "--source",
        "hf",
        "--tasks",
        "mnist",
        "--checkpoints",
        str(tmp_path / "ck"),
        "--data-location",
        str(tmp_path / "data"),
    ]
    assert download.main(args) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "ck/hf/ViT-B-32/MNIST/finetuned/model.safetensors").is_file()
    assert (tmp_path / "data/MNIST/mnist/test-00000-of-00001.parquet").is_file()
    assert not (tmp_path / "data/MNIST/.cache").exists() and not list(tmp_path.rglob(".*.download"))
    assert "python -m adamerging experiments main-table --model ViT-B-32" in out
    # second run: nothing fetched
    assert download.main(args) == 0 and "have " in capsys.readouterr().out


def test_dry_run_and_bad_task(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("dry run fetched")
    )
    assert (
        download.main(
            [
                "--source",
                "hf",
                "--dry-run",
                "--checkpoints",
                str(tmp_path),
                "--data-location",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.count("plan ") == 17
    assert download.main(["--source", "hf", "--tasks", "Flowers"]) == 2
    assert "unknown task 'Flowers'" in capsys.readouterr().err
