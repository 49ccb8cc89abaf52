"""Files that load but do not belong to the run stop it with one line (exit code 2) before anything
is merged, unless the user says they are intended; every result records which files made it."""

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from model_fixtures import mini_argv, write_mini_problem

from adamerging.checkpoints import hashing
from adamerging.checkpoints.hashing import FileHashes
from adamerging.checkpoints.layout import Checkpoint
from adamerging.checkpoints.loading import save_state_dict
from adamerging.commands import pipeline
from adamerging.merging.stats import task_vector_stats
from adamerging.merging.task_vectors import is_zero_view, task_vectors
from adamerging.models.clip import create_clip, encoder_state_dict
from adamerging.models.task_vectors_format import save_classification_head, save_image_encoder
from adamerging.runtime.errors import CheckpointError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_mini_problem(tmp_path_factory.mktemp("provenance"), n_per_class=1)


@pytest.fixture()
def odd(tmp_path):
    """A folder for files that do not belong to the mini run."""
    return tmp_path


def _main(argv, capsys, method="task_arithmetic"):
    """The script's entry point (flags, run, `cli.run_cli`): (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        pipeline.main(method, argv)
    return exit_.value.code, capsys.readouterr().err.strip()


def _refused(root, argv, capsys, pattern):
    code, err = _main(argv, capsys)
    assert code == 2 and "\n" not in err and err.startswith("error: "), err
    assert re.search(pattern, err), err
    # nothing was merged or written
    assert not (root / "results" / "mini" / "task_arithmetic.json").exists()
    return err


def _run(argv) -> dict:
    return pipeline.run("task_arithmetic", pipeline.parse_config("task_arithmetic", argv))


def _foreign_expert(path: Path, seed: int = 123) -> None:
    """A mini ImageEncoder pickle of another (random) initialisation: not a fine-tuning of the run's
    theta_0."""
    torch.manual_seed(seed)
    save_image_encoder(create_clip("mini"), path)


# heads --------------------------------------------------------------------------------------------


def test_a_head_of_another_width_is_refused_before_the_images_are_decoded(root, odd, capsys):
    folder = odd / "checkpoints" / "mini"
    shutil.copytree(root / "checkpoints" / "mini", folder)
    # a ViT-B head beside the 128-d mini encoder
    save_classification_head(torch.randn(10, 512), folder / "head_MNIST.pt")
    cache = odd / "cache"
    argv = mini_argv(
        root,
        "--checkpoints",
        str(odd / "checkpoints"),
        "--cache-dir",
        str(cache),
        "--results-dir",
        str(odd / "res"),
    )
    err = _refused(
        odd,
        argv,
        capsys,
        r"head_MNIST\.pt: the head is 512 wide, the mini image encoder's features are 128: "
        r"a head of another architecture; rebuild the heads from the text tower with"
        r" --rebuild-heads",
    )
    assert not (cache / "images").exists(), err  # checked before any test image was decoded
    # --rebuild-heads ignores every head file and builds them all from the text tower
    result = _run(argv + ["--rebuild-heads"])
    heads = result["provenance"]["files"]["heads"]
    assert set(heads) == {"MNIST", "SVHN", "EuroSAT"} and all(
        "built_from_text_tower" in h for h in heads.values()
    )
    assert all(
        h["built_from_text_tower"]["path"].endswith("clip_pretrained.safetensors")
        for h in heads.values()
    )


def test_a_head_with_other_classes_names_the_file_both_counts_and_the_fix(root, odd, capsys):
    folder = odd / "checkpoints" / "mini"
    shutil.copytree(root / "checkpoints" / "mini", folder)
    save_classification_head(torch.randn(7, 128), folder / "head_SVHN.pt")
    _refused(
        odd,
        mini_argv(
            root, "--checkpoints", str(odd / "checkpoints"), "--results-dir", str(odd / "res")
        ),
        capsys,
        r"head_SVHN\.pt: SVHN: head has 7 classes, the dataset has 10: .* --rebuild-heads",
    )


# experts ------------------------------------------------------------------------------------------


def test_a_copied_expert_is_refused_before_it_is_read_naming_both_tasks(
    root, odd, capsys, monkeypatch
):
    copy = odd / "copy_of_mnist.pt"
    shutil.copy(root / "checkpoints/mini/MNIST/finetuned.pt", copy)
    read = []
    real = Checkpoint.read
    monkeypatch.setattr(Checkpoint, "read", lambda self: read.append(self.path) or real(self))
    _refused(
        root,
        mini_argv(root, "--finetuned", f"SVHN={copy}"),
        capsys,
        r"^error: MNIST and SVHN load the same expert: .*MNIST/finetuned\.pt and"
        r" .*copy_of_mnist\.pt have the same content "
        r"\(sha256 [0-9a-f]{12}\): point each task at its own fine-tuned checkpoint; or pass"
        r" --allow-duplicate-experts",
    )
    assert copy not in read and read  # refused from its hash, before the copy was unpickled


def test_the_same_expert_in_another_format_is_refused_by_its_task_vector(root, odd, capsys):
    from adamerging.checkpoints.loading import load_state_dict

    # same weights, another file: only the task vectors tell
    resaved = odd / "svhn_is_mnist.safetensors"
    save_state_dict(load_state_dict(root / "checkpoints/mini/MNIST/finetuned.pt"), resaved)
    _refused(
        root,
        mini_argv(root, "--finetuned", f"SVHN={resaved}"),
        capsys,
        r"^error: MNIST and SVHN load the same expert: their task vectors have cosine 1\.0000"
        r" \(distinct fine-tunings are "
        r"near-orthogonal; limit 0\.95\): check .*; or pass --allow-duplicate-experts if this is"
        r" intended$",
    )


def test_an_expert_of_another_initialisation_is_refused_with_its_ratio(root, odd, capsys):
    _foreign_expert(odd / "foreign.pt")
    _refused(
        root,
        mini_argv(root, "--finetuned", f"SVHN={odd / 'foreign.pt'}"),
        capsys,
        r"^error: SVHN: \|\|tau\|\| / \|\|theta_0\|\| = 1\.\d+ over the visual tower, where a"
        r" fine-tuning moves the weights by a "
        r"few percent \(limit 0\.5\): .*foreign\.pt was not fine-tuned from .*zeroshot\.pt .*; or"
        r" pass --allow-foreign-experts",
    )


def test_an_expert_that_is_the_pretrained_model_is_refused(root, odd, capsys):
    shutil.copy(root / "checkpoints/mini/zeroshot.pt", odd / "zeroshot_again.pt")
    _refused(
        root,
        mini_argv(root, "--finetuned", f"EuroSAT={odd / 'zeroshot_again.pt'}"),
        capsys,
        r"^error: EuroSAT: the task vector is zero: .*zeroshot_again\.pt holds the pretrained"
        r" weights",
    )


def test_with_the_allow_flags_the_same_files_merge_with_a_warning_recorded_in_the_result(
    root, odd, caplog
):
    shutil.copy(root / "checkpoints/mini/MNIST/finetuned.pt", odd / "copy.pt")
    _foreign_expert(odd / "foreign.pt")
    argv = mini_argv(
        root,
        "--finetuned",
        f"SVHN={odd / 'copy.pt'}",
        "--finetuned",
        f"EuroSAT={odd / 'foreign.pt'}",
        "--results-dir",
        str(odd / "res"),
    )
    with caplog.at_level(logging.WARNING, logger="adamerging.run.provenance"):
        result = _run(argv + ["--allow-duplicate-experts", "--allow-foreign-experts"])
    accepted = result["provenance"]["accepted_warnings"]
    assert [m.split(":")[0] for m in accepted] == [
        "MNIST and SVHN load the same expert",
        "EuroSAT",
        # the hash, the ratio, the cosine
        "MNIST and SVHN load the same expert",
    ]
    assert all(any(m in r.getMessage() for r in caplog.records) for m in accepted)
    assert result["provenance"]["task_vectors"]["cosine"][0][1] == pytest.approx(1.0)
    assert result["provenance"]["task_vectors"]["norm_ratio"]["EuroSAT"] > 1
    # one flag allows one kind only
    with pytest.raises(CheckpointError, match="--allow-foreign-experts"):
        _run(argv + ["--allow-duplicate-experts"])
    with pytest.raises(CheckpointError, match="--allow-duplicate-experts"):
        _run(argv + ["--allow-foreign-experts"])


# the record ---------------------------------------------------------------------------------------


def test_every_result_records_its_files_hashes_norm_ratios_and_cosines(root, odd):
    result = _run(mini_argv(root, "--results-dir", str(odd / "res")))
    saved = json.loads((odd / "res" / "mini" / "task_arithmetic.json").read_text())
    record = saved["provenance"]
    assert record == json.loads(json.dumps(result["provenance"]))
    files = record["files"]
    for entry in [files["zeroshot"], *files["finetuned"].values(), *files["heads"].values()]:
        data = Path(entry["path"]).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest(), (
            entry["path"]
        )
    assert (
        files["finetuned"]["MNIST"]["format"]
        == "torch.save pickled module src.modeling.ImageEncoder"
    )
    assert (
        files["heads"]["MNIST"]["format"]
        == "torch.save pickled module src.modeling.ClassificationHead"
    )
    # EuroSAT has no head file in the fixture
    assert "built_from_text_tower" in files["heads"]["EuroSAT"]
    vectors = record["task_vectors"]
    assert vectors["tasks"] == ["MNIST", "SVHN", "EuroSAT"] and record["accepted_warnings"] == []
    # the numbers, from the files by a dense float64 computation over the visual entries
    from adamerging.checkpoints.hf import load_weights

    folder = root / "checkpoints" / "mini"
    theta0 = load_weights(folder / "zeroshot.pt")
    visual = [k for k in theta0 if k.startswith("model.visual.")]
    flat = lambda sd: torch.cat([sd[k].double().reshape(-1) for k in visual])  # noqa: E731
    base = flat(theta0)
    taus = [flat(load_weights(folder / t / "finetuned.pt")) - base for t in vectors["tasks"]]
    for t, tau in zip(vectors["tasks"], taus):
        assert vectors["norm_ratio"][t] == pytest.approx(float(tau.norm() / base.norm()), abs=2e-6)
    for i, a in enumerate(taus):
        for j, b in enumerate(taus):
            assert vectors["cosine"][i][j] == pytest.approx(
                float(a @ b / a.norm() / b.norm()), abs=2e-6
            )


def test_diagnose_reports_the_same_facts(root, odd):
    from adamerging.commands.diagnose import diagnose

    argv = mini_argv(root, "--results-dir", str(odd / "res"), "--samples", "3", "--lambdas", "0,1")
    report = diagnose(argv)
    run = _run(mini_argv(root, "--results-dir", str(odd / "res")))
    strip = lambda p: {k: v for k, v in p.items() if k != "seconds"}  # noqa: E731
    assert strip(report["provenance"]) == strip(run["provenance"])


def test_file_hashes_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):

    path = tmp_path / "expert.pt"
    path.write_bytes(b"weights" * 1000)
    cache = tmp_path / "cache" / "file_hashes.json"
    first = FileHashes(cache)
    assert first.digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    first.save()
    calls = []
    real = hashlib.file_digest
    monkeypatch.setattr(
        hashing.hashlib, "file_digest", lambda f, name: calls.append(name) or real(f, name)
    )
    again = FileHashes(cache)
    assert again.digest(path) == first.digest(path) and calls == []  # a rerun reads nothing
    # a changed file is hashed again
    path.write_bytes(b"other" * 1000)
    assert again.digest(path) == hashlib.sha256(b"other" * 1000).hexdigest() and calls == ["sha256"]
    (tmp_path / "blocked").write_text("a file where the cache folder would be")
    blocked = FileHashes(tmp_path / "blocked" / "file_hashes.json")
    assert blocked.digest(path) == again.digest(path)
    # an unwritable cache fails nothing
    blocked.save()


def test_task_vector_stats_skip_zero_views_but_count_theta0_everywhere():

    torch.manual_seed(0)
    clip = create_clip("mini")
    theta0 = {k: v.detach().clone() for k, v in encoder_state_dict(clip).items()}
    experts = []
    for _ in range(3):
        sd = {k: v.clone() for k, v in theta0.items()}
        for k in sd:
            # proj unchanged: a zero view
            if k.startswith("model.visual.") and k != "model.visual.proj":
                sd[k] += 0.01 * torch.randn_like(sd[k])
        experts.append(sd)
    tau = task_vectors(theta0, experts)
    assert is_zero_view(tau["model.visual.proj"]) and is_zero_view(
        tau["model.token_embedding.weight"]
    )
    stats = task_vector_stats(theta0, tau, list(theta0), ["A", "B", "C"])
    visual = [k for k in theta0 if k.startswith("model.visual.")]
    base = torch.cat([theta0[k].double().reshape(-1) for k in visual])
    dense = torch.stack(
        [torch.cat([tau[k][t].double().reshape(-1) for k in visual]) for t in range(3)]
    )
    assert stats["theta0_norm"] == pytest.approx(float(base.norm()), rel=1e-6)
    assert [stats["norm_ratio"][t] for t in "ABC"] == pytest.approx(
        (dense.norm(dim=1) / base.norm()).tolist(), rel=1e-5
    )
    cos = torch.nn.functional.cosine_similarity(dense[:, None], dense[None, :], dim=-1)
    torch.testing.assert_close(
        torch.tensor(stats["cosine"], dtype=torch.float64), cos, rtol=0, atol=1e-5
    )
