"""Pinned results: short AdaMerging runs on the random-weight mini problem reproduce stored numbers.

tests/pinned_mini_runs.json was computed with the code at commit 7ef8f98 (before the redesign into
merge_entry / merged_encoder / problem / config), by running each method below with its flags on
`write_mini_problem(n_per_class=4)` (the `mini` fixture) and storing the learned lambdas (the table
without its pretrained column), the per-step losses and the accuracies (%). Any change to sampling,
the merge, the objective or the optimizer moves these numbers; the tolerances only absorb float32
differences between CPUs (lambdas to 1e-5, losses to 1e-5 relative; accuracies on 40 images exact).
"""

import json
from pathlib import Path

import pytest
import torch
from test_pipeline import _argv, run

PINNED = json.loads((Path(__file__).parent / "pinned_mini_runs.json").read_text())


@pytest.mark.parametrize("method", list(PINNED))
def test_short_run_reproduces_the_pinned_lambdas_losses_and_accuracies(mini, method):
    pinned = PINNED[method]
    result = run(method, _argv(mini, *pinned["flags"]))
    lambdas = torch.tensor([row[1:] for row in result["coefficients"]["values"]])
    torch.testing.assert_close(lambdas, torch.tensor(pinned["lambdas"]), rtol=0, atol=1e-5)
    trajectory = result["adaptation"]["trajectory"]
    losses = [s["loss"] for s in trajectory if "loss" in s]
    assert losses == pytest.approx(
        [s["loss"] for s in pinned["trajectory"] if "loss" in s], rel=1e-5
    )
    assert [(s["step"], s["accuracy"]) for s in trajectory if "accuracy" in s] == [
        (s["step"], s["accuracy"]) for s in pinned["trajectory"] if "accuracy" in s
    ]
    assert result["accuracy"] == pinned["accuracy"]
