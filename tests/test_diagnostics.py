"""Merging diagnostics: each check on synthetic cases whose answer is known by construction, then
`src/diagnose.py` and the `--diagnose` hook end to end on random-weight mini checkpoints."""

import json
from pathlib import Path

import pytest
import torch
from model_fixtures import mini_argv, write_mini_problem

from adamerging.merging.stats import task_vector_stats
from adamerging.methods.diagnostics.checks import (
    TRUSTWORTHY,
    Check,
    accuracy_tolerance,
    check_correlation,
    check_cross_task,
    check_lambda_alignment,
    spearman,
    verdict,
)
from adamerging.methods.diagnostics.measure import entropy_and_loss, sample_tasks
from adamerging.methods.diagnostics.run import run_diagnostics
from adamerging.models.evaluation import accuracy
from adamerging.models.heads import Head
from adamerging.run.problem import TaskData

ROOT = Path(__file__).resolve().parents[1]
C = 5


def toy_logits(
    margin: torch.Tensor, scale: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A head over C classes: sample i scores `scale * margin_i` on its true class y_i and 0 on one
    wrong class (-scale elsewhere). margin > 0: correct; scale sets the confidence (entropy falls as
    it grows).
    """
    n = len(margin)
    labels = torch.arange(n) % C
    logits = torch.full((n, C), -1.0) * torch.as_tensor(scale).reshape(-1, 1)
    logits[torch.arange(n), labels] = torch.as_tensor(scale) * margin
    logits[torch.arange(n), (labels + 1) % C] = 0.0
    return logits, labels


def summarise(logits, labels):
    entropy, _ = entropy_and_loss(logits, labels)
    return float(entropy.mean()), accuracy(logits, labels)


# check 1 ------------------------------------------------------------------------------------------


def test_correlation_passes_when_confidence_tracks_correctness_and_fails_when_confidently_wrong():
    torch.manual_seed(0)
    margin = torch.linspace(-1, 2, 200)[torch.randperm(200)]
    # wrong samples are the uncertain ones
    honest, labels = toy_logits(margin, 3.0)
    entropy, loss = entropy_and_loss(honest, labels)
    good = check_correlation(entropy, loss)
    assert good.passed and good.values["spearman"] > 0.8

    # Confidently wrong: the more wrong a sample, the sharper its (wrong) peak: entropy falls as
    # loss rises.
    misleading, labels = toy_logits(-margin.abs(), 1 + 4 * margin.abs())
    entropy, loss = entropy_and_loss(misleading, labels)
    bad = check_correlation(entropy, loss)
    assert not bad.passed and bad.values["spearman"] < 0 and "< 0.80" in bad.message


def test_correlation_threshold_and_undefined_cases():
    x = torch.arange(10.0)
    assert check_correlation(x, x).passed and spearman(x, -x) == pytest.approx(-1)
    noisy = x + torch.tensor([0, 3, -3, 0, 3, -3, 0, 3, -3, 0.0])
    rho = spearman(x, noisy)
    assert (
        check_correlation(x, noisy, threshold=rho - 0.01).passed
        and not check_correlation(x, noisy, threshold=rho + 0.01).passed
    )
    constant = check_correlation(torch.ones(10), x)
    assert (
        not constant.passed
        and "undefined" in constant.message
        and constant.values["spearman"] is None
    )


# check 2 ------------------------------------------------------------------------------------------


def cross_task_case(others_margin: float, others_scale: float, n: int = 400) -> Check:
    """Task t alone vs with the other tasks' vectors added, whose effect on its head is built in:
    `others_margin` shifts every sample's margin, `others_scale` multiplies its confidence."""
    margin = torch.linspace(-0.5, 1.5, n)
    alone = summarise(*toy_logits(margin, 4.0))
    merged = summarise(*toy_logits(margin + others_margin, 4.0 * others_scale))
    return check_cross_task(alone[0], merged[0], alone[1], merged[1], n)


def test_cross_task_interference_that_raises_entropy_passes():
    # less accurate, less confident
    check = cross_task_case(others_margin=-0.4, others_scale=0.5)
    assert check.passed and check.values["entropy_merged"] > check.values["entropy_alone"]
    assert (
        check.values["accuracy_merged"] < check.values["accuracy_alone"]
        and "raise its entropy" in check.message
    )


def test_cross_task_interference_that_lowers_entropy_fails():
    # less accurate, MORE confident (the mini trials)
    check = cross_task_case(others_margin=-0.4, others_scale=3.0)
    assert not check.passed and check.values["entropy_merged"] < check.values["entropy_alone"]
    assert "lower its entropy" in check.message and "cut its accuracy" in check.message


def test_cross_task_positive_transfer_must_lower_entropy():
    # more accurate, more confident
    assert cross_task_case(others_margin=0.4, others_scale=1.5).passed
    # more accurate, yet entropy rises
    assert not cross_task_case(others_margin=0.4, others_scale=0.3).passed


def test_cross_task_accuracy_change_within_noise_counts_as_none():
    tol = accuracy_tolerance(80.0, 100)
    assert tol == pytest.approx(4.0)  # 100 * sqrt(0.8 * 0.2 / 100)
    # "gain" is noise; entropy fell
    assert not check_cross_task(0.5, 0.4, 80.0, 80.0 + tol / 2, n=100).passed
    # a real gain with falling entropy
    assert check_cross_task(0.5, 0.4, 80.0, 80.0 + 2 * tol, n=100).passed
    assert check_cross_task(0.5, 0.6, 80.0, 80.0, n=100).passed


# check 3 ------------------------------------------------------------------------------------------

LAMBDAS = [round(0.1 * i, 1) for i in range(11)]


def sweep(peak: float, confidence, n: int = 500) -> tuple[list[float], list[float]]:
    """A merged model along lambda: sample i is correct while |lambda - peak| < its tolerance
    (accuracy peaks at `peak`); confidence(lambda) scales the logits (so it alone decides where
    entropy is lowest)."""
    tolerance = torch.linspace(0.05, 0.6, n)
    entropies, accuracies = [], []
    for lam in LAMBDAS:
        h, a = summarise(*toy_logits(tolerance - abs(lam - peak), confidence(lam)))
        entropies.append(h)
        accuracies.append(a)
    return entropies, accuracies


def test_lambda_entropy_minimum_at_the_accuracy_peak_passes():
    # sharpest where it is most accurate
    entropy, acc = sweep(0.3, lambda lam: 12.0 - 20 * abs(lam - 0.3))
    check = check_lambda_alignment(LAMBDAS, entropy, acc, n=500)
    assert (
        check.passed
        and check.values["lambda_max_accuracy"] == 0.3
        and check.values["distance"] <= 0.2
    )


def test_lambda_entropy_still_falling_past_the_peak_fails():
    # sharpens with lambda (the mini trial 3)
    entropy, acc = sweep(0.1, lambda lam: 2.0 + 20 * lam)
    assert LAMBDAS[acc.index(max(acc))] == 0.1
    check = check_lambda_alignment(LAMBDAS, entropy, acc, n=500)
    assert not check.passed and check.values["lambda_min_entropy"] == 1.0
    assert "past" in check.message and "still falling" in check.message


def test_lambda_entropy_minimum_before_the_peak_fails_and_slack_is_respected():
    # the pretrained model is the most confident
    entropy, acc = sweep(0.7, lambda lam: 12.0 - 10 * lam)
    check = check_lambda_alignment(LAMBDAS, entropy, acc, n=500)
    assert (
        not check.passed and "before" in check.message and check.values["lambda_min_entropy"] == 0.0
    )
    assert check_lambda_alignment(LAMBDAS, entropy, acc, n=500, slack=0.8).passed


def test_lambda_accuracy_plateau_within_noise_counts_as_best():
    # flat within 1 SE from 0.2 to 0.5
    acc = [50, 70, 80, 80.5, 80.2, 79.8, 70, 60, 50, 40, 30]
    entropy = [1.0, 0.9, 0.8, 0.75, 0.7, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0]  # minimum at 0.5
    assert check_lambda_alignment(LAMBDAS, entropy, acc, n=256).passed
    # without noise: 0.3 vs 0.5
    assert not check_lambda_alignment(LAMBDAS, entropy, acc, n=None, slack=0.1).passed
    with pytest.raises(ValueError):
        check_lambda_alignment([0.3], [1.0], [50.0])


# stats, verdict, sampling -------------------------------------------------------------------------


def test_task_vector_stats_on_known_vectors():
    keys = ["model.positional_embedding", "model.visual.a", "model.visual.b"]
    theta0 = {
        "model.positional_embedding": torch.full((3,), 100.0),
        "model.visual.a": torch.tensor([3.0, 0.0]),
        "model.visual.b": torch.tensor([[4.0]]),
    }
    # text side: must be ignored
    tau = {
        "model.positional_embedding": torch.ones(3, 3) * 50,
        "model.visual.a": torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]),
        "model.visual.b": torch.tensor([[[0.0]], [[0.0]], [[1.0]]]),
    }
    stats = task_vector_stats(theta0, tau, keys, ["A", "B", "C"])
    assert stats["theta0_norm"] == pytest.approx(5.0)
    assert stats["norm_ratio"] == pytest.approx({"A": 0.2, "B": 0.4, "C": 3**0.5 / 5})
    cos = torch.tensor(stats["cosine"])
    assert (
        cos[0, 1] == pytest.approx(0.0)
        and cos[0, 2] == pytest.approx(1 / 3**0.5)
        and torch.allclose(cos.diag(), torch.ones(3))
    )


def test_verdict_lines():
    ok = Check("spearman", True, "fine", {})
    bad = Check("cross_task", False, "the other tasks' vectors lower its entropy", {})
    lines, overall, trustworthy = verdict({"A": [ok, ok], "B": [ok, ok]}, pooled=ok)
    assert (
        trustworthy
        and TRUSTWORTHY in overall
        and all(TRUSTWORTHY in line for line in lines.values())
    )
    lines, overall, trustworthy = verdict({"A": [ok, ok], "B": [ok, bad]}, pooled=ok)
    assert not trustworthy and "1 of 2 tasks (B)" in overall and TRUSTWORTHY in lines["A"]
    assert (
        "NOT" in lines["B"]
        and "cross_task failed: the other tasks' vectors lower its entropy" in lines["B"]
    )
    _, overall, trustworthy = verdict(
        {"A": [ok]}, pooled=Check("spearman", False, "Spearman 0.50 < 0.80", {})
    )
    assert not trustworthy and "pooled Spearman 0.50 < 0.80" in overall


def test_sample_is_seeded_labeled_and_independent_of_task_order():
    head = Head(torch.randn(3, 4))
    a = TaskData(
        "A", torch.arange(50).view(50, 1, 1, 1).to(torch.uint8), head, torch.arange(50) % 3
    )
    b = TaskData(
        "B", torch.arange(30).view(30, 1, 1, 1).to(torch.uint8), head, torch.arange(30) % 3
    )
    s1, s2 = sample_tasks([a, b], 10, seed=0), sample_tasks([b, a], 10, seed=0)
    assert torch.equal(s1[0].images, s2[1].images) and len(s1[0].images) == 10
    # labels follow their images
    assert torch.equal(s1[0].labels, s1[0].images.view(-1).long() % 3)
    assert not torch.equal(s1[0].images, sample_tasks([a], 10, seed=1)[0].images)
    # fewer than asked: all of them
    assert len(sample_tasks([b], 100, seed=0)[0].images) == 30
    with pytest.raises(ValueError, match="labels"):
        sample_tasks([TaskData("C", a.images, head, None)], 10, seed=0)


# end to end ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_mini_problem(tmp_path_factory.mktemp("diag"))


def _argv(root):
    return mini_argv(root)


def test_diagnose_command_writes_report_and_plots(mini, capsys):
    from adamerging.commands.diagnose import main as diagnose_main

    diagnose_main([*_argv(mini), "--samples", "12", "--lambdas", "1,0.3,0,0.6,0.30"])
    out = capsys.readouterr().out
    assert "Overall: entropy is" in out and "MNIST: entropy is" in out
    folder = mini / "results" / "mini"
    report = json.loads((folder / "diagnostics.json").read_text())
    assert report["tasks"] == ["MNIST", "SVHN", "EuroSAT"] and report["samples"] == {
        "MNIST": 12,
        "SVHN": 12,
        "EuroSAT": 12,
    }
    assert set(report["test_data"]) == {"MNIST", "SVHN", "EuroSAT"} and all(
        r["n_images"] > 12 for r in report["test_data"].values()
    )
    assert (
        report["lambda_sweep"]["lambdas"] == [0.0, 0.3, 0.6, 1.0]
        and len(report["lambda_sweep"]["accuracy"]["SVHN"]) == 4
    )
    assert (
        set(report["checks"]["MNIST"]) == {"spearman", "cross_task", "lambda"}
        and "why" in report["thresholds"]
    )
    assert (
        len(report["task_vectors"]["cosine"]) == 3
        and len(report["per_sample"]["EuroSAT"]["entropy"]) == 12
    )
    # the merged model at 0.3 is the sweep's 0.3 point: one measurement, reported consistently
    assert (
        report["cross_task"]["SVHN"]["accuracy_merged"]
        == report["lambda_sweep"]["accuracy"]["SVHN"][1]
    )
    assert isinstance(report["verdict"]["trustworthy"], bool) and report["verdict"][
        "overall"
    ].startswith("Overall:")
    md = (folder / "diagnostics.md").read_text()
    assert report["verdict"]["overall"] in md and "## Thresholds and why" in md
    for name in report["plots"].values():
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and name in md


def test_hook_runs_on_the_adamerging_parser_with_defaults(mini, capsys):
    from dataclasses import replace

    from adamerging.commands.pipeline import parse_config
    from adamerging.methods.registry import METHODS
    from adamerging.run.problem import load_problem

    method = METHODS["layer_wise_adamergingpp"]
    # no diagnostics flags at all: defaults apply
    config = parse_config(method.name, _argv(mini))
    # as `--diagnose-lambdas 0,0.3 --diagnose-samples 6`
    config = replace(config, diagnose_lambdas=(0.0, 0.3), diagnose_samples=6)
    problem = load_problem(config, method.vectors)
    report = run_diagnostics(problem, config, vectors=method.vectors)
    assert (
        report["vectors"] == "ties"
        and report["samples"]["MNIST"] == 6
        and report["lambdas"] == [0.0, 0.3]
    )
    assert report["verdict"]["overall"] in capsys.readouterr().out
    # the hook only prints
    assert not (mini / "results" / "mini" / "diagnostics_ties.json").exists()
