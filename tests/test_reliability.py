"""Interrupted and failing AdaMerging runs lose nothing; speed options keep the maths."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adamerging.adaptation import AdaptationStopped, adamerge
from adamerging.config import RunConfig
from adamerging.heads import Head
from adamerging.merged_encoder import MergedEncoder
from adamerging.problem import TaskData
from test_adaptation import _problem
from test_pipeline import ROOT, _argv, mini, run  # noqa: F401  (module fixture)


def _adapt(problem, steps, **kw):
    clip, theta0, tau, entries, data, normalize = problem
    config = RunConfig(steps=steps, lr=0.02, no_progress=True, **{k: v for k, v in kw.items() if k in RunConfig.__dataclass_fields__})
    merged = MergedEncoder(clip.visual, theta0, tau, entries, "cpu", checkpointing=config.checkpointing)
    return adamerge(merged, data, kw.get("normalize", normalize), config, "layer-wise", resume=kw.get("resume"), save_state=kw.get("save_state"))


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
    assert [r["loss"] for r in resumed.trajectory if "loss" in r] == [r["loss"] for r in full.trajectory if "loss" in r]


def test_nan_loss_stops_with_step_number_and_last_good_lambdas():
    clip, theta0, tau, entries, data, normalize = _problem()
    bad = [TaskData(t.name, t.images, Head(torch.full_like(t.head.weight, float("nan"))), t.labels) for t in data[:1]] + data[1:]
    saved = []
    with pytest.raises(AdaptationStopped, match="step 1.*NaN"):
        _adapt((clip, theta0, tau, entries, bad, normalize), 3, save_state=saved.append)
    assert saved[-1]["step"] == 0
    assert torch.allclose(saved[-1]["raw"], torch.tensor(0.3))


def test_activation_checkpointing_and_bf16_keep_the_result():
    problem = _problem()
    plain = _adapt(problem, 3)
    ckpt = _adapt(problem, 3, checkpointing=True)
    torch.testing.assert_close(ckpt.table.lambdas, plain.table.lambdas, rtol=0, atol=1e-6)
    bf16 = _adapt(problem, 3, precision="bf16")
    # Adam moves every coefficient by about +-lr per step whatever the gradient's size, so single entries
    # with near-zero gradients may differ in sign; the table as a whole and the losses must agree.
    assert (bf16.table.lambdas - plain.table.lambdas).abs().mean() < 0.01
    losses = lambda r: torch.tensor([x["loss"] for x in r.trajectory if "loss" in x])  # noqa: E731
    torch.testing.assert_close(losses(bf16), losses(plain), rtol=0.03, atol=0)


def test_pipeline_resume_continues_to_the_same_table(mini):  # noqa: F811
    full = run("layer_wise_adamerging", _argv(mini, "--steps", "6", "--lr", "0.05", "--save-every", "2"))
    run("layer_wise_adamerging", _argv(mini, "--steps", "3", "--lr", "0.05"))
    resumed = run("layer_wise_adamerging", _argv(mini, "--steps", "6", "--lr", "0.05", "--resume"))
    assert resumed["coefficients"]["values"] == full["coefficients"]["values"]
    state = torch.load(mini / "results/mini/layer_wise_adamerging.state.pt", weights_only=True)
    assert state["step"] == 6


def test_torchrun_two_processes_learn_the_same_coefficients(mini, tmp_path):  # noqa: F811
    common = _argv(mini, "--steps", "4", "--lr", "0.05")
    single = run("layer_wise_adamerging", common)
    argv = [a if a != str(mini / "results") else str(tmp_path) for a in common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "src" / "main_layer_wise_adamerging.py"), *argv],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    multi = json.loads((tmp_path / "mini" / "layer_wise_adamerging.json").read_text())
    torch.testing.assert_close(torch.tensor(multi["coefficients"]["values"]), torch.tensor(single["coefficients"]["values"]), rtol=0, atol=1e-5)
    assert multi["accuracy"] == pytest.approx(single["accuracy"])


def test_same_seed_same_coefficients_and_accuracies(mini):  # noqa: F811
    a = run("task_wise_adamergingpp", _argv(mini, "--steps", "3", "--lr", "0.05", "--seed", "7"))
    b = run("task_wise_adamergingpp", _argv(mini, "--steps", "3", "--lr", "0.05", "--seed", "7"))
    assert a["coefficients"] == b["coefficients"] and a["accuracy"] == b["accuracy"]
