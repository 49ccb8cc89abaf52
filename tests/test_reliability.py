"""Interrupted and failing AdaMerging runs lose nothing; speed options keep the maths."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_adaptation import _problem
from test_pipeline import ROOT, _argv, run

from adamerging.merging.encoder import MergedEncoder
from adamerging.merging.tables import CoefficientTable
from adamerging.methods.adamerging import adamerge
from adamerging.methods.loop import AdaptationStopped, ResumeError, StateFile
from adamerging.models.heads import Head
from adamerging.run.config import RunConfig
from adamerging.run.flags import RESUMABLE
from adamerging.run.problem import TaskData
from adamerging.runtime.distributed import Ranks
from adamerging.runtime.files import require_finite


def _adapt(problem, steps, **kw):
    clip, theta0, tau, entries, data, normalize = problem
    config = RunConfig(
        steps=steps,
        no_progress=True,
        **{
            "lr": 0.02,
            "device": "cpu",
            **{k: v for k, v in kw.items() if k in RunConfig.__dataclass_fields__},
        },
    )
    merged = MergedEncoder(
        clip.visual, theta0, tau, entries, "cpu", checkpointing=config.checkpointing
    )
    return adamerge(
        merged,
        data,
        kw.get("normalize", normalize),
        config,
        "layer-wise",
        resume=kw.get("resume"),
        save_state=kw.get("save_state"),
    )


def test_ctrl_c_saves_state_and_resume_equals_an_uninterrupted_run():
    problem = _problem(images=48)
    full = _adapt(problem, 5)
    calls = {"n": 0}
    normalize = problem[5]

    def interrupting(x):
        calls["n"] += 1
        if calls["n"] == 3:  # during step 3
            raise KeyboardInterrupt
        return normalize(x)

    saved = []
    with pytest.raises(KeyboardInterrupt):
        _adapt(problem, 5, normalize=interrupting, save_state=saved.append)
    assert saved[-1]["step"] == 2
    resumed = _adapt(problem, 5, resume=saved[-1])
    assert torch.equal(resumed.table.lambdas, full.table.lambdas)
    assert [r["loss"] for r in resumed.trajectory if "loss" in r] == [
        r["loss"] for r in full.trajectory if "loss" in r
    ]


def test_nan_loss_at_the_start_stops_with_step_number_and_saves_nothing():
    clip, theta0, tau, entries, data, normalize = _problem()
    bad = [
        TaskData(t.name, t.images, Head(torch.full_like(t.head.weight, float("nan"))), t.labels)
        for t in data[:1]
    ] + data[1:]
    saved = []
    with pytest.raises(
        AdaptationStopped, match="step 1.*NaN.*initial lambdas.*nothing saved: check the inputs"
    ):
        _adapt((clip, theta0, tau, entries, bad, normalize), 3, save_state=saved.append)
    assert saved == []  # the initial lambdas never gave a finite loss: no state is "good"


def test_huge_lr_stop_keeps_the_last_finite_state_and_a_resume_with_a_lower_lr_finishes(
    mini,
):
    # lr 1e8 without the clamp: step 1 (at the initial lambdas) is finite and moves lambdas to ~1e8,
    # step 2 is NaN
    with pytest.raises(AdaptationStopped, match="step 2.*NaN.*state of step 0.*--resume"):
        run(
            "layer_wise_adamerging",
            _argv(mini, "--steps", "6", "--lr", "1e8", "--no-clamp", "--save-every", "1"),
        )
    state = torch.load(mini / "results/mini/layer_wise_adamerging.state.pt", weights_only=True)
    assert state["step"] == 0 and torch.equal(state["raw"], torch.full_like(state["raw"], 0.3))
    assert state["optimizer"]["state"] == {}  # Adam's state before step 1's update
    resumed = run(
        "layer_wise_adamerging",
        _argv(mini, "--steps", "6", "--lr", "1e-3", "--no-clamp", "--resume"),
    )
    # column 0: the pretrained model
    values = torch.tensor(resumed["coefficients"]["values"])[:, 1:]
    assert torch.isfinite(values).all() and (values - 0.3).abs().max() <= 6 * 1e-3 * 1.01
    assert [r["step"] for r in resumed["adaptation"]["trajectory"] if "loss" in r] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert resumed["adaptation"]["segments"] == [
        {"steps": [1, 6], "lr": 1e-3, "precision": "fp32", "device": "cpu"}
    ]


def test_resume_with_a_new_lr_uses_it_and_records_it_per_step_range(mini):
    state_file = mini / "results/mini/task_wise_adamerging.state.pt"
    run("task_wise_adamerging", _argv(mini, "--steps", "3", "--lr", "0.05"))
    before = torch.load(state_file, weights_only=True)
    resumed = run("task_wise_adamerging", _argv(mini, "--steps", "6", "--lr", "1e-6", "--resume"))
    after = torch.load(state_file, weights_only=True)
    assert [g["lr"] for g in after["optimizer"]["param_groups"]] == [1e-6]
    # Adam moves each coefficient by about lr per step: 3 steps at 1e-6, not at the saved 0.05
    assert 0 < (after["raw"] - before["raw"]).abs().max() < 1e-4
    assert resumed["adaptation"]["segments"] == [
        {"steps": [1, 3], "lr": 0.05, "precision": "fp32", "device": "cpu"},
        {"steps": [4, 6], "lr": 1e-6, "precision": "fp32", "device": "cpu"},
    ]
    # no single lr was used throughout
    assert resumed["config"]["lr"] is None and resumed["config"]["steps"] == 6
    with pytest.raises(
        ResumeError,
        match=r"task_wise_adamerging\.state\.pt: cannot resume: the saved run used --seed 0, "
        r"this one --seed 1; rerun without --resume",
    ):
        run("task_wise_adamerging", _argv(mini, "--steps", "8", "--resume", "--seed", "1"))


def test_resume_refuses_other_settings_older_states_and_fewer_steps():
    problem = _problem()
    saved = []
    _adapt(problem, 2, save_state=saved.append)
    with pytest.raises(
        ResumeError,
        match=r"used --seed 0, --batch-size-adapt 16, no --no-clamp, this one --seed 1, "
        r"--batch-size-adapt 8, --no-clamp; rerun without --resume or with the same settings$",
    ):
        _adapt(problem, 4, resume=saved[-1], seed=1, batch_size_adapt=8, no_clamp=True)
    with pytest.raises(ResumeError, match="holds no run settings"):
        _adapt(problem, 4, resume={k: v for k, v in saved[-1].items() if k != "config"})
    with pytest.raises(ResumeError, match="at step 2, past --steps 1; pass --steps 2 or more"):
        _adapt(problem, 1, resume=saved[-1])
    # lr, steps, cadence and speed options may change
    assert _adapt(
        problem, 3, resume=saved[-1], lr=0.01, eval_every=1, adapt_mode="per-task"
    ).segments[-1]["steps"] == [3, 3]


def test_every_config_setting_is_either_resumable_or_checked():
    fixed = {f.name for f in dataclasses.fields(RunConfig)} - RESUMABLE
    assert {
        "model",
        "tasks",
        "seed",
        "batch_size_adapt",
        "batches_per_step",
        "objective",
        "init",
        "no_clamp",
        "adapt_fraction",
        "corruption",
        "test_split",
        "ties_k",
        "ties_combine",
        "coefficients",
        "lam",
        "data_format",
    } <= fixed
    assert RESUMABLE < {f.name for f in dataclasses.fields(RunConfig)}


def test_nothing_non_finite_is_written_as_a_state_or_a_result(tmp_path):
    save = StateFile(
        RunConfig(results_dir=str(tmp_path), model="mini").output_dir / "x.state.pt", Ranks()
    ).save
    table = CoefficientTable(torch.tensor([[0.3, float("inf")]]), ["A", "B"])
    with pytest.raises(
        ValueError,
        match=(
            r"refusing to write the AdaMerging state .*x\.state\.pt: table\.values\[0\]\[2\] is"
            r" NaN/inf"
        ),
    ):
        save({"step": 1, "raw": torch.zeros(1, 2), "table": table})
    assert not (tmp_path / "mini" / "x.state.pt").exists()
    with pytest.raises(ValueError, match=r"accuracy\.A is NaN/inf"):
        require_finite({"accuracy": {"A": float("nan")}, "average": 1.0}, "the results")


def test_activation_checkpointing_and_bf16_keep_the_result():
    problem = _problem()
    plain = _adapt(problem, 3)
    ckpt = _adapt(problem, 3, checkpointing=True)
    torch.testing.assert_close(ckpt.table.lambdas, plain.table.lambdas, rtol=0, atol=1e-6)
    bf16 = _adapt(problem, 3, precision="bf16")
    # Adam moves every coefficient by about +-lr per step whatever the gradient's size, so single
    # entries with near-zero gradients may differ in sign; the table as a whole and the losses must
    # agree.
    assert (bf16.table.lambdas - plain.table.lambdas).abs().mean() < 0.01
    losses = lambda r: torch.tensor([x["loss"] for x in r.trajectory if "loss" in x])  # noqa: E731
    torch.testing.assert_close(losses(bf16), losses(plain), rtol=0.03, atol=0)


def test_pipeline_resume_continues_to_the_same_table(mini):
    full = run(
        "layer_wise_adamerging", _argv(mini, "--steps", "6", "--lr", "0.05", "--save-every", "2")
    )
    run("layer_wise_adamerging", _argv(mini, "--steps", "3", "--lr", "0.05"))
    resumed = run("layer_wise_adamerging", _argv(mini, "--steps", "6", "--lr", "0.05", "--resume"))
    assert resumed["coefficients"]["values"] == full["coefficients"]["values"]
    state = torch.load(mini / "results/mini/layer_wise_adamerging.state.pt", weights_only=True)
    assert state["step"] == 6


def test_torchrun_two_processes_learn_the_same_coefficients(mini, tmp_path):
    # with the diagnostics: each rank measures its own tasks, rank 0 gathers them
    common = _argv(
        mini,
        "--steps",
        "4",
        "--lr",
        "0.05",
        "--diagnose",
        "--diagnose-samples",
        "8",
        "--diagnose-lambdas",
        "0,0.5,1",
    )
    single = run("layer_wise_adamerging", common)
    argv = [a if a != str(mini / "results") else str(tmp_path) for a in common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "src" / "main_layer_wise_adamerging.py"),
            *argv,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    multi = json.loads((tmp_path / "mini" / "layer_wise_adamerging.json").read_text())
    torch.testing.assert_close(
        torch.tensor(multi["coefficients"]["values"]),
        torch.tensor(single["coefficients"]["values"]),
        rtol=0,
        atol=1e-5,
    )
    assert multi["accuracy"] == pytest.approx(single["accuracy"])

    def spearman(r):
        return {
            **r["diagnostics"]["spearman"]["per_task"],
            "pooled": r["diagnostics"]["spearman"]["pooled"],
        }  # noqa: E731

    assert spearman(multi) == pytest.approx(spearman(single), abs=1e-6, nan_ok=True)
    assert multi["diagnostics"]["verdict"] == single["diagnostics"]["verdict"]


def test_same_seed_same_coefficients_and_accuracies(mini):
    a = run("task_wise_adamergingpp", _argv(mini, "--steps", "3", "--lr", "0.05", "--seed", "7"))
    b = run("task_wise_adamergingpp", _argv(mini, "--steps", "3", "--lr", "0.05", "--seed", "7"))
    assert a["coefficients"] == b["coefficients"] and a["accuracy"] == b["accuracy"]


def test_a_write_killed_with_sigkill_leaves_debris_the_next_write_removes(tmp_path):
    """A process killed mid-write (SIGKILL: no cleanup runs) leaves its temporary file; the next
    atomic write in that folder recognises it (this host, a process that no longer exists) and
    removes it, and keeps a live process's."""
    import signal

    from adamerging.runtime.files import temp_prefix, write_json

    writer = (
        "import os, sys, time\n"
        "from adamerging.runtime.files import atomic_write\n"
        "with atomic_write(sys.argv[1]) as f:\n"
        "    f.write(b'x' * 1_000_000)\n"
        "    f.flush()\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    target = tmp_path / "big.bin"
    child = subprocess.Popen(
        [sys.executable, "-c", writer, str(target)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    debris = [p for p in tmp_path.iterdir() if p.name.startswith(".big.bin.")]
    assert len(debris) == 1 and debris[0].stat().st_size == 1_000_000 and not target.exists()
    # a live process's temporary file (this one's) stays
    live = tmp_path / f"{temp_prefix('other.json')}abc.tmp"
    live.write_text("{}")
    write_json({"a": 1}, tmp_path / "result.json")
    assert not debris[0].exists() and live.exists()
    assert json.loads((tmp_path / "result.json").read_text()) == {"a": 1}


def _refuse_writes_under(monkeypatch, folder, code):
    """Every temporary file under `folder` fails with errno `code` (a read-only or full disk: as
    root, permissions cannot make a folder unwritable)."""
    import errno as errnos
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(folder)):
            raise OSError(code, os.strerror(code), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return errnos


def test_an_unwritable_results_folder_is_one_line_before_any_work(mini, monkeypatch, capsys):
    import errno

    from adamerging.commands import pipeline

    results = mini / "results-readonly"
    _refuse_writes_under(monkeypatch, results, errno.EROFS)
    argv = [*_argv(mini, "--steps", "1"), "--results-dir", str(results)]
    with pytest.raises(SystemExit) as stop:
        pipeline.main("layer_wise_adamerging", argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert str(results / "mini") in err and "Read-only file system" in err
    assert "--results-dir" in err and not list(results.rglob("*.json"))


def test_a_read_only_data_folder_caches_in_the_user_cache(mini, monkeypatch, tmp_path, caplog):
    import errno

    from adamerging.run import tasks

    tasks._default_cache.cache_clear()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _refuse_writes_under(monkeypatch, (mini / "data").resolve(), errno.EROFS)
    result = run("task_arithmetic", _argv(mini))
    tasks._default_cache.cache_clear()
    assert "caching in" in caplog.text and list((tmp_path / "xdg" / "adamerging").rglob("*.npy"))
    assert result["accuracy"] == run("task_arithmetic", _argv(mini))["accuracy"]


def test_a_full_disk_while_caching_decodes_in_memory_and_leaves_nothing(
    mini, monkeypatch, tmp_path
):
    import errno

    cache = tmp_path / "cache"
    baseline = run("task_arithmetic", _argv(mini, "--cache-dir", str(tmp_path / "fine")))
    real = np.lib.format.open_memmap

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    result = run("task_arithmetic", _argv(mini, "--cache-dir", str(cache)))
    monkeypatch.setattr(np.lib.format, "open_memmap", real)
    assert result["accuracy"] == baseline["accuracy"]
    images = cache / "images"
    assert not [p for p in images.iterdir() if p.suffix in (".npy", ".tmp")]


def test_a_full_disk_when_the_result_is_written_is_one_line_and_leaves_no_half_file(
    mini, monkeypatch, tmp_path
):
    import errno

    from adamerging.runtime import files
    from adamerging.runtime.errors import WriteError

    results = tmp_path / "results"
    real = files.json.dump

    def full(data, f, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.json, "dump", full)
    with pytest.raises(WriteError, match=r"cannot write .*task_arithmetic\.json \(No space left"):
        run("task_arithmetic", [*_argv(mini), "--results-dir", str(results)])
    monkeypatch.setattr(files.json, "dump", real)
    assert [p.name for p in (results / "mini").iterdir()] == []


def test_resume_after_an_expert_was_replaced_is_refused_before_loading(mini, tmp_path):
    """--resume checks content, not only settings: the state holds the hashes of the files it was
    made from; a replaced expert stops the run naming the task and both hashes."""
    import shutil

    args = ("--steps", "2", "--save-every", "1", "--results-dir", str(tmp_path / "results"))
    run("layer_wise_adamerging", _argv(mini, *args))
    state = torch.load(
        tmp_path / "results" / "mini" / "layer_wise_adamerging.state.pt", weights_only=True
    )
    assert set(state["inputs"]) == {"MNIST", "SVHN", "EuroSAT", "zeroshot"}
    expert = mini / "checkpoints" / "mini" / "SVHN" / "finetuned.pt"
    kept = tmp_path / "svhn.pt"
    shutil.copy2(expert, kept)
    try:
        shutil.copy2(mini / "checkpoints" / "mini" / "MNIST" / "finetuned.pt", expert)
        resumed = _argv(mini, *args[:2], "--steps", "4", *args[4:], "--resume")
        with pytest.raises(ValueError, match=r"made with SVHN's expert of sha256 .* now has"):
            run("layer_wise_adamerging", resumed)
    finally:
        shutil.copy2(kept, expert)
    run("layer_wise_adamerging", _argv(mini, "--steps", "4", *args[4:], "--resume"))
