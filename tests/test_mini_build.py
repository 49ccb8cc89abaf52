"""The mini benchmark builder (`python -m adamerging.mini.build --quick`): files, layouts,
formats."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import adamerging  # noqa: F401
from adamerging.checkpoints.loading import load_checkpoint, load_state_dict
from adamerging.commands.report import main
from adamerging.datasets.labels import task_templates
from adamerging.datasets.preprocessing import preprocess_images
from adamerging.datasets.splits import read_split
from adamerging.datasets.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory):
    base = tmp_path_factory.mktemp("mini")
    data, ckpt = base / "data", base / "ckpt"
    env = dict(__import__("os").environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "adamerging.mini.build",
            "--quick",
            "--data-root",
            str(data),
            "--checkpoints",
            str(ckpt),
            "--threads",
            "1",
            "--rebuild",
            "--artefacts",
            str(base / "artefacts"),
        ],
        cwd=base,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return data, ckpt, proc.stdout


def _tasks(ckpt):
    return (ckpt / "tasks.txt").read_text().split()


def test_progress_lines_and_report(quick_build):
    data, ckpt, out = quick_build
    for stage in ("data", "pool", "pretrain", "heads", "experts"):
        assert f"{stage} done in" in out
    report = json.loads((ckpt / "build_report.json").read_text())
    tasks = _tasks(ckpt)
    canonical = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
    assert 4 <= len(tasks) <= 8 and tasks == [t for t in canonical if t in tasks]
    assert report["tasks"] == tasks and report["quick"] is True
    for t in tasks:
        r = report["per_task"][t]
        for k in ("zeroshot", "expert", "linear_probe", "tau_over_theta0"):
            assert 0.0 <= r[k] <= 1.0 or k == "tau_over_theta0"
    assert report["timings_s"]["total"] > 0


def test_layouts_on_disk(quick_build):
    data, ckpt, _ = quick_build
    tasks = _tasks(ckpt)
    expect = {
        "MNIST": [
            "MNIST/raw/train-images-idx3-ubyte",
            "MNIST/raw/train-labels-idx1-ubyte",
            "MNIST/raw/t10k-images-idx3-ubyte",
            "MNIST/raw/t10k-labels-idx1-ubyte",
        ],
        "SVHN": ["svhn/train_32x32.mat", "svhn/test_32x32.mat"],
        "GTSRB": [
            "gtsrb/GT-final_test.csv",
            "gtsrb/GTSRB/Training/00000",
            "gtsrb/GTSRB/Final_Test/Images/00000.ppm",
        ],
        "EuroSAT": [
            "EuroSAT_splits/train/Forest",
            "EuroSAT_splits/test/SeaLake",
            "EuroSAT_splits/val/River",
        ],
        "DTD": ["dtd/train", "dtd/val"],
        "SUN397": ["sun397/train", "sun397/val"],
    }
    dirs = {
        "SUN397": "sun397",
        "EuroSAT": "EuroSAT_splits",
        "SVHN": "svhn",
        "GTSRB": "gtsrb",
        "MNIST": "MNIST",
        "DTD": "dtd",
        "Cars": "stanford_cars",
        "RESISC45": "resisc45",
    }
    for t in tasks:
        for rel in expect.get(t, []):
            assert (data / rel).exists(), rel
        names = (data / dirs[t] / "classnames.txt").read_text().splitlines()
        templates = (data / dirs[t] / "templates.txt").read_text().splitlines()
        assert len(names) >= 2 and templates and all("{c}" in x for x in templates)
    if "MNIST" in tasks:
        raw = (data / "MNIST/raw/t10k-images-idx3-ubyte").read_bytes()
        magic, n, h, w = struct.unpack(">IIII", raw[:16])
        assert magic == 2051 and (h, w) == (32, 32) and len(raw) == 16 + n * h * w
    if "SVHN" in tasks:
        from scipy.io import loadmat

        m = loadmat(data / "svhn/test_32x32.mat")
        assert m["X"].shape[:3] == (32, 32, 3) and m["X"].dtype == np.uint8
        assert m["y"].shape == (m["X"].shape[3], 1) and set(np.unique(m["y"])) <= set(range(1, 11))
    if "SUN397" in tasks:
        folders = sorted(p.name for p in (data / "sun397/train").iterdir())
        assert all(f[1] == "_" for f in folders)


def test_checkpoint_files(quick_build):
    data, ckpt, _ = quick_build

    tasks = _tasks(ckpt)
    full = load_state_dict(ckpt / "clip_pretrained.safetensors")
    assert any(k.startswith("transformer.") for k in full) and "visual.conv1.weight" in full
    zs = load_state_dict(ckpt / "zeroshot.pt")
    assert "model.visual.conv1.weight" in zs and not any(
        k.startswith("model.transformer.") for k in zs
    )
    for t in tasks:
        ft = load_state_dict(ckpt / t / "finetuned.pt")
        assert list(ft) == list(zs)
        assert any(not torch.equal(ft[k], zs[k]) for k in zs if k.startswith("model.visual."))
        # text-side leftovers are not fine-tuned
        assert torch.equal(ft["model.token_embedding.weight"], zs["model.token_embedding.weight"])
        head = load_checkpoint(ckpt / f"head_{t}.pt")
        assert head.state_dict["weight"].shape[1] == zs["model.visual.proj"].shape[1]
        assert float(head.state_dict["bias"].abs().sum()) == 0.0


def test_read_back_with_project_readers(quick_build):
    data, ckpt, _ = quick_build
    from adamerging.models import heads as H

    for t in _tasks(ckpt):
        head = H.load_head(ckpt / f"head_{t}.pt")
        for split in ("train", "test"):
            s = read_split(t, data, split)
            assert len(s) > 0 and len(s.classnames) == head.num_classes
            assert s.labels.min() >= 0 and s.labels.max() < head.num_classes
        assert (
            task_templates(t, data)
            == (data / TASKS[t].folder / "templates.txt").read_text().splitlines()
        )


def test_class_order_matches_folders(quick_build):
    """Readers number folder classes in sorted folder order: classnames.txt must follow that
    order."""
    data, ckpt, _ = quick_build
    from adamerging.mini import layouts

    for t in _tasks(ckpt):
        sub = {"SUN397": "sun397/train", "DTD": "dtd/train", "EuroSAT": "EuroSAT_splits/train"}.get(
            t
        )
        if sub is None:
            continue
        folders = sorted(p.name for p in (data / sub).iterdir() if p.is_dir())
        names = read_split(t, data, "test").classnames
        assert layouts.folder_names(t, names) == folders, t
        if t == "SUN397":
            assert names == [f[2:].replace("_", " ") for f in folders]


def test_reported_zeroshot_accuracy_reproduces_from_files(quick_build):
    """Accuracy of the zero-shot encoder + head on the test files equals the builder's own
    number."""
    data, ckpt, _ = quick_build
    from adamerging.models import clip as M
    from adamerging.models import heads as H
    from adamerging.models.clip import load_encoder_weights

    report = json.loads((ckpt / "build_report.json").read_text())
    clip = M.create_clip("mini")
    load_encoder_weights(clip, load_state_dict(ckpt / "zeroshot.pt"))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in M.normalization(clip))
    for t in _tasks(ckpt):
        s = read_split(t, data, "test")
        x = (preprocess_images(s, 32).float() / 255 - mean) / std
        with torch.no_grad():
            pred = H.load_head(ckpt / f"head_{t}.pt")(clip.encode_image(x)).argmax(1).numpy()
        acc = float((pred == s.labels).mean())
        assert abs(acc - report["per_task"][t]["zeroshot"]) <= 1.5 / len(s), (
            t,
            acc,
            report["per_task"][t]["zeroshot"],
        )


def test_models_and_heads_roundtrip(quick_build):
    data, ckpt, _ = quick_build
    from adamerging.models import clip as M
    from adamerging.models import heads as H

    clip = M.create_clip("mini")
    M.load_clip_weights(
        clip, dict(load_state_dict(ckpt / "clip_pretrained.safetensors")), "pretrained"
    )
    tok = M.get_tokenizer("mini")
    t = _tasks(ckpt)[0]
    names, templates = read_split(t, data, "test").classnames, task_templates(t, data)
    w = H.zeroshot_weights(clip, tok, names, templates)
    assert torch.allclose(w, H.load_head(ckpt / f"head_{t}.pt").weight, atol=1e-5)


@pytest.mark.parametrize("task", ["SVHN", "DTD", "SUN397", "EuroSAT", "GTSRB", "MNIST"])
def test_every_writer_reads_back(tmp_path, task):
    """Each layout writer (including tasks the final design does not use) round-trips through
    read_split."""
    from adamerging.mini import layouts
    from adamerging.mini import tasks as T

    gen, names, templates = T.EVAL_TASKS[task]
    splits = {s: gen(np.random.default_rng(i), 30, s) for i, s in enumerate(["train", "test"])}
    names, splits = layouts.on_disk_order(task, names, splits)
    layouts.WRITERS[task](str(tmp_path), names, templates, splits)
    for s in ("train", "test"):
        got = read_split(task, tmp_path, s)
        assert got.classnames == list(names)
        imgs = preprocess_images(got, 32).numpy().transpose(0, 2, 3, 1)
        # same multiset of (image, label) pairs as written, whatever order the reader lists them in
        key = lambda x, y: sorted(zip([a.tobytes() for a in x], y.tolist()))  # noqa: E731
        assert key(imgs, got.labels) == key(splits[s][0], splits[s][1])


def test_build_takes_the_extra_stand_in_tasks_and_names_an_unknown_one(tmp_path):
    """`--tasks` wires the SVHN and DTD stand-ins to the build; a task without a stand-in is a
    one-line error."""
    from adamerging.mini import build as B
    from adamerging.mini import tasks as T

    assert {"SVHN", "DTD"} <= set(T.EVAL_TASKS) and not {"SVHN", "DTD"} & set(B.FULL["tasks"])
    with pytest.raises(ValueError, match=r"no mini stand-in for \['Cars'\]"):
        B.build(tmp_path / "data", tmp_path / "ckpt", quick=True, tasks=["MNIST", "Cars"])
    # rejected before anything is written
    assert not (tmp_path / "ckpt").exists()


def test_build_from_artefacts_equals_the_rebuild_byte_for_byte(quick_build, tmp_path):
    """The default build loads the base and task vectors that `--rebuild` wrote, skips pretraining
    and fine-tuning, and writes the very same checkpoint files."""
    from adamerging.mini import artefacts as A

    data, ckpt, _ = quick_build
    art = ckpt.parent / "artefacts"
    assert A.verify(art) == []
    env = dict(__import__("os").environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "adamerging.mini.build",
            "--quick",
            "--data-root",
            str(tmp_path / "data"),
            "--checkpoints",
            str(tmp_path / "ckpt"),
            "--threads",
            "1",
            "--artefacts",
            str(art),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "committed artefacts" in proc.stdout and "pool done" not in proc.stdout
    files = sorted(
        p.relative_to(ckpt)
        for p in ckpt.rglob("*")
        if p.is_file() and p.name != "build_report.json"
    )
    assert len(files) >= 10
    for rel in files:
        assert (tmp_path / "ckpt" / rel).read_bytes() == (ckpt / rel).read_bytes(), rel
    old = json.loads((ckpt / "build_report.json").read_text())
    new = json.loads((tmp_path / "ckpt" / "build_report.json").read_text())
    assert new["data_sha256"] == old["data_sha256"] and new["per_task"] == {
        t: dict(r, expert_source="committed task vector") for t, r in old["per_task"].items()
    }
    assert (old["multitask"]["source"], new["multitask"]["source"]) == (
        "fine-tuned",
        "committed task vector",
    )
    assert new["multitask"]["accuracy"] == old["multitask"]["accuracy"]
    # an altered artefact is caught by its hash
    victim = A.tau_path(old["tasks"][0], art)
    victim.write_bytes(victim.read_bytes()[:-4] + b"\0\0\0\0")
    assert any("sha256 differs" in p for p in A.verify(art))


def test_committed_artefacts_match_their_hashes_and_size_limits():
    from adamerging.mini import artefacts as A

    assert A.verify() == []
    manifest = A.read_manifest()
    assert set(manifest["expert_keys"]) == set(manifest["tasks"]) and manifest["multitask_key"]
    assert {f"tau_{t}.safetensors" for t in [*manifest["tasks"], "multitask"]} | {
        "base_visual.safetensors",
        "base_text.safetensors",
    } == set(manifest["files"])


def test_committed_base_and_experts_are_trained():
    """Not random weights: the committed base's text-tower heads beat chance on fresh test images of
    every committed task, and each expert (theta_0 + its task vector) beats the zero-shot head on
    its task."""
    import torch.nn.functional as F

    from adamerging.mini import artefacts as A
    from adamerging.mini import layouts
    from adamerging.mini import tasks as T
    from adamerging.mini import train as TR
    from adamerging.models import clip as M
    from adamerging.models import heads as H

    clip = A.load_base(M.create_clip("mini"))
    tok = M.get_tokenizer("mini")
    theta0 = {k: v.clone() for k, v in clip.visual.state_dict().items()}
    for t in A.read_manifest()["tasks"]:
        gen, classnames, templates = T.EVAL_TASKS[t]
        x, y = gen(np.random.default_rng([12345, T.CANONICAL.index(t)]), 200, "test")
        classnames, splits = layouts.on_disk_order(t, classnames, {"test": (x, y)})
        x, y = splits["test"]
        head = H.zeroshot_weights(clip, tok, classnames, templates)
        tau = A.load_task_vector(t)
        with torch.no_grad():
            zs = (F.normalize(clip.visual(TR.to_tensor(x)), dim=-1) @ head.t()).argmax(1).numpy()
            clip.visual.load_state_dict({k: theta0[k] + tau[k] for k in theta0})
            ex = (F.normalize(clip.visual(TR.to_tensor(x)), dim=-1) @ head.t()).argmax(1).numpy()
            clip.visual.load_state_dict(theta0)
        zs, ex = float((zs == y).mean()), float((ex == y).mean())
        assert zs > 1.5 / len(classnames), (t, zs)
        assert ex > zs + 0.1, (t, zs, ex)


def test_every_pickle_of_the_build_loads_with_plain_torch_load_and_open_clip_only(quick_build):
    """The task-vectors code and the authors' code read the mini checkpoints as they read the public
    ones."""
    from test_checkpoints import load_without_this_package

    from adamerging.models import clip as M

    data, ckpt, _ = quick_build
    encoders = [ckpt / "zeroshot.pt", *(ckpt / t / "finetuned.pt" for t in _tasks(ckpt))]
    images = torch.randn(2, 3, 32, 32)
    features = {}
    for path in encoders:
        clip = M.create_clip("mini")
        M.load_encoder_weights(clip, load_state_dict(path))
        with torch.no_grad():
            features[path] = clip.encode_image(images)
    heads = sorted(ckpt.glob("head_*.pt"))
    got = load_without_this_package(encoders + heads, features, images)
    for path in encoders:
        assert (
            got[str(path)]["same_features"] is True
            and "open_clip.transformer.QuickGELU" in got[str(path)]["classes"]
        ), path
    assert all(
        got[str(h)]["classes"] == ["src.modeling.ClassificationHead"] for h in heads
    ) and len(heads) == len(_tasks(ckpt))


def test_add_missing_fine_tunes_only_the_multi_task_model_on_the_committed_base(
    quick_build, tmp_path
):
    """`--add-missing` keeps the base and experts and adds the multi-task model's task vector: the
    same file `--rebuild` wrote on this machine, with the manifest's hashes updated."""
    import shutil

    from adamerging.mini import artefacts as A
    from adamerging.mini import build as B

    data, ckpt, _ = quick_build
    art = tmp_path / "art"
    shutil.copytree(ckpt.parent / "artefacts", art)
    made = A.tau_path("multitask", art).read_bytes()
    A.tau_path("multitask", art).unlink()
    manifest = A.read_manifest(art)
    (art / A.MANIFEST).write_text(
        json.dumps({k: v for k, v in manifest.items() if k != "multitask_key"})
    )
    with pytest.raises(ValueError, match="--add-missing"):
        B.build(
            tmp_path / "data",
            tmp_path / "ckpt",
            quick=True,
            threads=1,
            rebuild=True,
            artefacts=art,
            add_missing=True,
        )
    env = dict(__import__("os").environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "adamerging.mini.build",
            "--quick",
            "--data-root",
            str(tmp_path / "data"),
            "--checkpoints",
            str(tmp_path / "ckpt"),
            "--threads",
            "1",
            "--artefacts",
            str(art),
            "--add-missing",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pool done" not in proc.stdout and "multi-task model (fine-tuned)" in proc.stdout
    assert A.tau_path("multitask", art).read_bytes() == made and A.verify(art) == []
    after = A.read_manifest(art)
    assert (
        after["multitask_key"] == manifest["multitask_key"]
        and after["base_key"] == manifest["base_key"]
    )
    assert (
        set(after["files"]) == set(manifest["files"])
        and after["made_with"] == manifest["made_with"]
    )


def test_a_missing_package_of_the_mini_extra_is_one_line(monkeypatch, capsys):
    import importlib.util

    from adamerging.mini import build as B

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a)
    )
    with pytest.raises(SystemExit) as exit_:
        B.main(["--quick"])
    assert exit_.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == 'error: the mini benchmark needs scikit-image: pip install -e ".[mini]" (or: pip install'
        " scikit-image)"
    )


def test_results_made_on_a_quick_build_say_so(quick_build, tmp_path, caplog):
    data, ckpt, _ = quick_build
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "mini").symlink_to(ckpt)  # the runs read <checkpoints>/<model>/
    from adamerging.commands.pipeline import parse_config
    from adamerging.commands.pipeline import run as run_method

    results = tmp_path / "results"
    argv = [
        "--model",
        "mini",
        "--checkpoints",
        str(tmp_path / "ckpt"),
        "--data-location",
        str(data),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results-dir",
        str(results),
        "--device",
        "cpu",
        "--no-progress",
    ]
    with caplog.at_level("WARNING"):
        run_method("zeroshot", parse_config("zeroshot", argv))
    assert "quick mini build" in caplog.text
    saved = json.loads((results / "mini" / "zeroshot.json").read_text())
    assert saved["provenance"]["mini_build"]["quick"] is True
    assert (
        saved["provenance"]["mini_build"]["config_hash"]
        == json.loads((ckpt / "build_report.json").read_text())["config_hash"]
    )

    main(["--model", "mini", "--results-dir", str(results)])
    assert "Zero-shot: made on a quick mini build" in (results / "mini" / "table.md").read_text()
    # the same result from a full build: no warning
    saved["provenance"]["mini_build"]["quick"] = False
    (results / "mini" / "zeroshot.json").write_text(json.dumps(saved))
    main(["--model", "mini", "--results-dir", str(results)])
    assert "quick" not in (results / "mini" / "table.md").read_text()
