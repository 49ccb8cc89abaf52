"""AdaRank and CART: the SVD merge is Task Arithmetic at full rank, the straight-through gate has
its closed-form gradient, the streamed gradients equal autograd's, CART at rho = 1 is weight
averaging and at small rho keeps the stated rank, step 0 is Task Arithmetic, a frozen mask is
unclamped layer-wise AdaMerging, runs are seeded and resumable, masks reload, bad input is one
line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_pipeline import _argv, run

from adamerging.merging import svd
from adamerging.merging.encoder import MergedEncoder
from adamerging.methods.adamerging import Lambdas
from adamerging.methods.adarank import RankMasked, RankMasks
from adamerging.models.clip import create_clip


def _merged(num_tasks: int = 3) -> MergedEncoder:
    """The random-weight mini encoder with random task vectors on every visual entry."""
    torch.manual_seed(0)
    clip = create_clip("mini")
    entries = [f"model.{k}" for k in clip.state_dict() if k.startswith("visual.")]
    theta0 = {
        f"model.{k}": v.clone() for k, v in clip.state_dict().items() if k.startswith("visual.")
    }
    tau = {k: 0.02 * torch.randn(num_tasks, *v.shape) for k, v in theta0.items()}
    return MergedEncoder(clip.visual, theta0, tau, entries, "cpu")


def _masks(masked: RankMasked, init: float, rho: float) -> RankMasks:
    lambdas = Lambdas(len(masked.entries), masked.num_tasks, init, clamp=False)
    return RankMasks(lambdas, masked.initial_logits(rho), temperature=10.0)


def test_the_svd_merge_is_task_arithmetic_at_full_rank_and_drops_gated_components():
    tau = torch.randn(3, 12, 7)
    origin = torch.randn(12, 7)
    factors = svd.factorize(tau)
    lambdas = torch.tensor([0.3, 0.5, 0.7])
    full = svd.merge_svd_entry(origin, svd.svd_scale(lambdas, torch.ones(3, 7), factors), factors)
    torch.testing.assert_close(full, origin + torch.einsum("t,tmn->mn", lambdas, tau))
    gates = torch.zeros(3, 7)
    gates[1, :2] = 1  # task 1's two leading components only
    kept = svd.merge_svd_entry(origin, svd.svd_scale(lambdas, gates, factors), factors) - origin
    assert torch.linalg.matrix_rank(kept) == 2


def test_the_straight_through_gate_is_hard_forward_and_sigmoid_backward():
    logits = torch.tensor([-0.3, -0.01, 0.02, 0.4], requires_grad=True)
    gates = svd.ste_gates(logits, temperature=10.0)
    assert torch.equal(gates.detach(), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    weights = torch.tensor([1.0, -2.0, 3.0, 0.5])
    (gates * weights).sum().backward()
    p = torch.sigmoid(logits.detach() / 10.0)
    torch.testing.assert_close(logits.grad, weights * p * (1 - p) / 10.0)


@pytest.mark.parametrize("base", ["ta", "cart"])
def test_streamed_gradients_equal_autograd_through_the_merge(base):
    masked = RankMasked(_merged(), base)
    images = torch.randn(4, 3, 32, 32)
    grads = []
    for streamed in (False, True):
        masks = _masks(masked, 0.3, 0.5)
        learned = masks()
        if streamed:
            params, finish = masked.streamed_params(learned)
        else:
            params = masked.params(learned)
        masked(params, images).pow(2).mean().backward()
        if streamed:
            finish()
        grads.append([masks.raw.grad.clone(), masks.logits.grad.clone()])
    for autograd_grad, streamed_grad in zip(*grads):
        assert float(autograd_grad.abs().max()) > 0
        torch.testing.assert_close(streamed_grad, autograd_grad, rtol=1e-4, atol=1e-7)


def test_cart_is_weight_averaging_at_full_rank_and_keeps_rho_of_each_task_s_rank():
    merged = _merged()
    masked = RankMasked(merged, "cart")
    average = merged.params(torch.full((1, 3), 1 / 3))
    full = masked.params(_masks(masked, 2.3, 1.0).hard())
    for name in average:
        torch.testing.assert_close(full[name], average[name], rtol=0, atol=2e-6)
    # one task's share of an attention matrix at rho = 0.25: rank floor(0.25 * 128)
    masks = _masks(masked, 2.3, 0.25)
    lambdas, gates = masks.hard()
    lambdas[:, 1:] = 0
    name = "transformer.resblocks.0.attn.out_proj.weight"
    share = masked.params((lambdas, gates))[name] - masked.origin[name]
    assert torch.linalg.matrix_rank(share) == math.floor(0.25 * 128)


def test_adarank_starts_at_task_arithmetic_and_cart_is_its_own_row(mini):
    ta = run("task_arithmetic", _argv(mini))
    adarank = run("adarank", _argv(mini, "--steps", "2", "--eval-every", "1"))
    assert adarank["adaptation"]["trajectory"][0]["accuracy"] == ta["accuracy"]
    record = adarank["adarank"]
    assert record["base"] == "ta" and record["decomposed_entries"] == 16
    assert 1.2 < record["factor_bytes"] / record["dense_bytes"] < 1.5
    assert record["oracle_best_evaluation"]["step"] in (0, 1, 2)
    cart = run("cart", _argv(mini))
    assert cart["adarank"]["kept_components"] == {t: 20 / 128 for t in cart["tasks"]}
    assert cart["coefficients"]["values"][0][1:] == [2.3] * 3 and "adaptation" not in cart


def test_a_frozen_mask_is_unclamped_layer_wise_adamerging(mini):
    steps = ("--steps", "3", "--lr", "0.05")
    adamerging = run("layer_wise_adamerging", _argv(mini, *steps, "--no-clamp"))
    adarank = run("adarank", _argv(mini, *steps, "--mask-lr", "0"))
    a = torch.tensor(adamerging["coefficients"]["values"])
    b = torch.tensor(adarank["coefficients"]["values"])
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
    losses = [
        [e["loss"] for e in r["adaptation"]["trajectory"] if "loss" in e]
        for r in (adamerging, adarank)
    ]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert adarank["adarank"]["kept_components"] == {t: 1.0 for t in adarank["tasks"]}


def test_seeded_resumable_and_the_masks_reload(mini, tmp_path):
    args = ("--steps", "4", "--save-every", "2", "--lr", "0.05")
    one = run("cart_adarank", _argv(mini, *args, "--save-merged", str(tmp_path / "m.safetensors")))
    two = run("cart_adarank", _argv(mini, *args))
    assert one["adaptation"]["trajectory"] == two["adaptation"]["trajectory"]
    run("cart_adarank", _argv(mini, "--steps", "2", "--lr", "0.05"))
    resumed = run("cart_adarank", _argv(mini, *args, "--resume"))
    assert resumed["coefficients"] == one["coefficients"]
    assert resumed["adarank"]["kept_components"] == one["adarank"]["kept_components"]
    assert resumed["accuracy"] == one["accuracy"]
    masks = mini / "results" / "mini" / "cart_adarank.masks.safetensors"
    again = run("cart_adarank", _argv(mini, "--masks", str(masks)))
    assert again["result_name"] == "cart_adarank_reloaded"
    assert again["accuracy"] == one["accuracy"] and "adaptation" not in again
    # the saved merged model is the hard-masked one: the same weights as the reloaded merge
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "m.safetensors"))
    run(
        "cart_adarank",
        _argv(mini, "--masks", str(masks), "--save-merged", str(tmp_path / "r.safetensors")),
    )
    reloaded = load_file(str(tmp_path / "r.safetensors"))
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[k], reloaded[k]) for k in saved)


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--rank-fraction", "0"), "--rank-fraction must be in"),
        (("--rank-fraction", "1.5"), "--rank-fraction must be in"),
        (("--mask-temperature", "0"), "--mask-temperature must be > 0"),
        (("--masks", "missing.safetensors"), "no such file"),
    ],
)
def test_bad_adarank_settings_are_one_line_errors(mini, extra, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run("adarank", _argv(mini, *extra))


def test_a_masks_file_of_another_task_set_or_method_is_refused_before_loading(mini):
    run("adarank", _argv(mini, "--steps", "1"))
    masks = str(mini / "results" / "mini" / "adarank.masks.safetensors")
    with pytest.raises(ValueError, match="saved for tasks"):
        run("adarank", _argv(mini, "--masks", masks, tasks="MNIST,SVHN"))
    with pytest.raises(ValueError, match="saved for base ta"):
        run("cart_adarank", _argv(mini, "--masks", masks))
    with pytest.raises(ValueError, match="learns no masks"):
        run("task_arithmetic", _argv(mini, "--masks", masks))


def test_the_adarank_experiment_writes_both_budgets_and_quotes_the_oracle_apart(mini):
    from adamerging.commands.experiments import main as experiments_main

    experiments_main(["adarank", *_argv(mini, "--steps", "1", "--official-steps", "2")])
    md = (mini / "results" / "mini" / "adarank_table.md").read_text()
    # the method's own result is untouched
    assert json.loads((mini / "results" / "mini" / "adarank.json").read_text())["accuracy"]
    for row in ("CART |", "TA + AdaRank |", "CART + AdaRank (2 steps x 1 batch) |"):
        assert f"| {row}" in md
    assert "Oracle, not a result" in md
    official = mini / "results" / "mini" / "runs" / "adarank" / "official" / "adarank.json"
    assert json.loads(official.read_text())["config"]["batches_per_step"] == 1


def test_the_chunked_step_learns_what_the_fused_step_learns(mini):
    steps = ("--steps", "2", "--lr", "0.05")
    fused = run("cart_adarank", _argv(mini, *steps, "--adapt-mode", "fused"))
    chunked = run("cart_adarank", _argv(mini, *steps, "--adapt-mode", "per-task"))
    a = torch.tensor(fused["coefficients"]["values"])
    b = torch.tensor(chunked["coefficients"]["values"])
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    assert chunked["adarank"]["kept_components"] == fused["adarank"]["kept_components"]
