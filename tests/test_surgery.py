"""Representation Surgery and its deep variant: step 0 is the merged model, an expert's own features
give no loss, cached and on-the-fly training agree, the deep hooks leave the encoder unchanged at
step 0 and fit ViT-L/14's shapes, runs are seeded and resumable, bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch
from test_pipeline import _argv, run

from adamerging.commands import pipeline
from adamerging.merging.encoder import MergedEncoder
from adamerging.methods.surgery import Hooks, Surgery, SurgeryModule, forward, l1, positions
from adamerging.models.clip import create_clip

SHORT = ("--surgery-steps", "3", "--eval-every", "2")


def _encoder(model: str = "mini"):
    torch.manual_seed(0)
    clip = create_clip(model)
    sd = {"model." + k: v for k, v in clip.state_dict().items()}
    entries = [k for k in sd if k.startswith("model.visual.")]
    theta0 = {k: sd[k] for k in entries}
    tau = {k: torch.zeros(1, *v.shape) for k, v in theta0.items()}
    merged = MergedEncoder(clip.visual, theta0, tau, entries, "cpu")
    return merged, merged.params(torch.zeros(1, 1))


def test_a_module_starts_as_the_identity_and_an_expert_s_own_features_give_no_gradient():
    module = SurgeryModule(32, 4, torch.Generator().manual_seed(0))
    z = torch.randn(5, 32)
    assert torch.equal(module(z), z)  # W_up = 0
    loss = l1([module(z)], [z.clone()])
    loss.backward()
    assert float(loss.detach()) == 0 and float(module.down.grad.abs().sum()) == 0
    assert float(module.up.grad.abs().sum()) == 0


def test_deep_hooks_leave_the_encoder_unchanged_at_step_0_and_record_each_block():
    merged, params = _encoder()
    places = positions(merged.visual, "deep")
    surgery = Surgery(["A"], places, 4, seed=0)
    x = torch.randn(2, 3, 32, 32)
    hooks = Hooks(merged.visual)
    # as evaluated (no gradients: the same attention kernels with and without the modules)
    with torch.no_grad():
        plain = merged(params, x)
        out = forward(merged, params, x, surgery.of("A"), hooks)
    assert len(out) == len(merged.visual.transformer.resblocks) + 1
    assert torch.equal(out[-1], plain) and out[0].shape == (2, merged.visual.transformer.width)
    # a non-zero module changes every later block
    with torch.no_grad():
        surgery.of("A")["block_0"].up.normal_()
        changed = forward(merged, params, x, surgery.of("A"), hooks)
    assert not torch.equal(changed[-1], plain) and not torch.equal(changed[1], out[1])


def test_deep_surgery_fits_vit_l14_widths():
    clip = create_clip("ViT-L-14", device="meta")
    places = positions(clip.visual, "deep")
    assert len(places) == 25 and places[0] == ("block_0", 1024) and places[-1] == ("final", 768)


@pytest.mark.parametrize("variant", ["v1", "deep"])
def test_surgery_runs_on_a_merged_model_and_step_0_is_its_accuracy(mini, variant):
    plain = run("task_arithmetic", _argv(mini))
    result = run("task_arithmetic", _argv(mini, "--surgery", variant, *SHORT))
    record = result["surgery"]
    assert result["result_name"] == "task_arithmetic" + (
        "_surgery" if variant == "v1" else "_surgery_deep"
    )
    assert record["trajectory"][0]["accuracy"] == plain["accuracy"] == record["merged_accuracy"]
    assert record["features"] == ("cached features" if variant == "v1" else "on the fly")
    assert all(0 <= a <= 100 for a in result["accuracy"].values())
    losses = [e["loss"] for e in record["trajectory"] if "loss" in e]
    assert len(losses) == 3 and losses[-1] < losses[0]
    saved = mini / "results" / "mini" / f"{result['result_name']}.surgery.safetensors"
    again = run(
        "task_arithmetic",
        _argv(mini, "--surgery", variant, "--surgery-modules", str(saved)),
    )
    assert again["accuracy"] == result["accuracy"] and "trajectory" not in again["surgery"]


def test_cached_and_on_the_fly_features_train_the_same_modules(mini):
    cached = run("ties_merging", _argv(mini, "--surgery", "v1", *SHORT))
    fly = run(
        "ties_merging",
        _argv(mini, "--surgery", "v1", "--surgery-features", "on-the-fly", *SHORT),
    )
    a = [e["loss"] for e in cached["surgery"]["trajectory"] if "loss" in e]
    b = [e["loss"] for e in fly["surgery"]["trajectory"] if "loss" in e]
    assert a == pytest.approx(b, rel=1e-5) and cached["accuracy"] == fly["accuracy"]


def test_seeded_resumable_and_stale_momentum_moves_other_tasks(mini):
    args = ("--surgery", "v1", "--surgery-steps", "4", "--save-every", "2")
    one = run("weight_averaging", _argv(mini, *args))
    two = run("weight_averaging", _argv(mini, *args))
    assert one["surgery"]["trajectory"] == two["surgery"]["trajectory"]
    # stopped after step 2 (the state saved then), resumed to 4: the uninterrupted run's modules
    state = mini / "results" / "mini" / "weight_averaging_surgery.surgery.state.pt"
    assert state.is_file()
    short = run("weight_averaging", _argv(mini, "--surgery", "v1", "--surgery-steps", "2"))
    assert short["surgery"]["trajectory"][-1]["step"] == 2
    resumed = run("weight_averaging", _argv(mini, *args, "--resume"))

    def losses(r):
        return [(e["step"], e["loss"]) for e in r["surgery"]["trajectory"] if "loss" in e]

    assert losses(resumed) == losses(one) and resumed["accuracy"] == one["accuracy"]
    stale = run("weight_averaging", _argv(mini, *args, "--surgery-stale-momentum"))
    assert stale["surgery"]["trajectory"][1:] != one["surgery"]["trajectory"][1:]


def test_surgery_on_every_single_model_method_and_a_reloaded_table(mini):
    for method in ("zeroshot", "fisher_merging", "multitask", "layer_wise_adamerging"):
        result = run(method, _argv(mini, "--surgery", "v1", "--surgery-steps", "1", "--steps", "1"))
        assert result["result_name"].endswith("_surgery") and "surgery" in result
    table = mini / "results" / "mini" / "layer_wise_adamerging_surgery.json"
    reloaded = run(
        "layer_wise_adamerging",
        _argv(mini, "--coefficients", str(table), "--surgery", "v1", "--surgery-steps", "1"),
    )
    assert reloaded["result_name"] == "layer_wise_adamerging_reloaded_surgery"


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--surgery", "v1", "--surgery-rank", "0"), "--surgery-rank must be >= 1"),
        (("--surgery", "v1", "--surgery-rank", "4096"), "wider than the 128-wide features"),
        (("--surgery-modules", "x.safetensors"), "needs --surgery"),
        (("--surgery", "deep", "--surgery-features", "cached"), "cannot be computed once"),
    ],
)
def test_bad_surgery_settings_are_one_line_errors_before_loading(mini, extra, message):
    with pytest.raises(ValueError, match=message):
        pipeline.run(
            "task_arithmetic", pipeline.parse_config("task_arithmetic", _argv(mini, *extra))
        )


def test_no_single_model_and_a_modules_file_of_another_task_set_are_refused(mini, tmp_path):
    with pytest.raises(ValueError, match="individual evaluates each expert"):
        run("individual", _argv(mini, "--surgery", "v1"))
    result = run("task_arithmetic", _argv(mini, "--surgery", "v1", "--surgery-steps", "1"))
    saved = mini / "results" / "mini" / f"{result['result_name']}.surgery.safetensors"
    argv = _argv(mini, "--surgery", "v1", "--surgery-modules", str(saved), tasks="MNIST,SVHN")
    with pytest.raises(ValueError, match="saved for tasks"):
        run("task_arithmetic", argv)
    assert json.loads((mini / "results" / "mini" / "task_arithmetic_surgery.json").read_text())


def test_the_surgery_experiment_writes_the_plain_and_both_variants_per_base(mini):
    from adamerging.commands.experiments import main as experiments_main
    from adamerging.reporting.paper import surgery_logged

    argv = _argv(mini, "--methods", "task_arithmetic", "--surgery-steps", "2")
    experiments_main(["surgery", *argv])
    md = (mini / "results" / "mini" / "surgery.md").read_text()
    for row in (
        "Task Arithmetic |",
        "Task Arithmetic + Surgery |",
        "Task Arithmetic + Surgery (deep) |",
    ):
        assert f"| {row}" in md
    assert "authors' log" not in md  # no logs for the mini model
    logged = surgery_logged("ViT-B-32", "Layer-wise AdaMerging + Surgery")
    assert logged["Avg"] == 86.1 and len(logged) == 9
