"""The experiment commands: table rendering beside the paper, CSV, the correlation and depth code on
inputs with known answers, then several experiments end to end on random-weight mini checkpoints."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import mini_argv, write_mini_problem

from adamerging.commands.experiments import run
from adamerging.commands.experiments.coefficients import depth_profile
from adamerging.commands.experiments.common import comparison
from adamerging.commands.experiments.generalization import (
    _paper_generalization,
    generalization_splits,
)
from adamerging.commands.report import main
from adamerging.merging.tables import CoefficientTable
from adamerging.methods.diagnostics.measure import binned_means, correlation_report
from adamerging.methods.registry import METHODS
from adamerging.models.clip import depth_group
from adamerging.reporting.paper import paper_row
from adamerging.reporting.tables import NORMALIZED, csv_table, markdown_table, with_normalized

ROOT = Path(__file__).resolve().parents[1]
PAPER_TASKS = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
PAPER_TA = [55.2, 54.9, 66.7, 78.9, 80.2, 69.7, 97.3, 50.4]  # Table 2, ViT-B/32, average 69.1


# tables -------------------------------------------------------------------------------------------


def test_rows_beside_the_paper_with_signed_differences():
    ours = {
        "Task Arithmetic": {t: v + 1.0 for t, v in zip(PAPER_TASKS, PAPER_TA)},
        "Zero-shot": {t: 50.0 for t in PAPER_TASKS},
    }
    rows, signed = comparison("ViT-B-32", ours, PAPER_TASKS)
    assert list(rows) == [
        "Task Arithmetic",
        "Task Arithmetic (paper)",
        "Task Arithmetic (ours - paper)",
        "Zero-shot",
        "Zero-shot (paper)",
        "Zero-shot (ours - paper)",
    ]
    # the printed average, not the mean of rounded cells
    assert rows["Task Arithmetic (paper)"]["Avg"] == 69.1
    diff = rows["Task Arithmetic (ours - paper)"]
    assert all(diff[t] == pytest.approx(1.0) for t in PAPER_TASKS)
    assert diff["Avg"] == pytest.approx(np.mean(PAPER_TA) + 1 - 69.1)
    # the paper's "Pretrained"
    assert rows["Zero-shot (paper)"]["SUN397"] == 62.3 and rows["Zero-shot (paper)"]["Avg"] == 48.0
    table = markdown_table(rows, PAPER_TASKS, signed=signed)
    assert (
        "| Task Arithmetic (paper) | 55.2 | 54.9 | 66.7 | 78.9 | 80.2 | 69.7 | 97.3 | 50.4 | 69.1 |"
        in table
    )
    assert "| Task Arithmetic (ours - paper) | +1.0 | +1.0 |" in table
    # 50 - 48.0 on the average
    assert "| Zero-shot (ours - paper) | -12.3 |" in table and "| +2.0 |" in table


def test_paper_rows_on_a_task_subset_and_a_model_the_paper_does_not_report():
    sub = paper_row("ViT-B-32", "Task Arithmetic", ["MNIST", "DTD"])
    # no printed average for a subset; a merge with a task outside the paper's 8 has no paper row
    assert sub == {"MNIST": 97.3, "DTD": 50.4}
    assert paper_row("ViT-B-32", "Task Arithmetic", ["MNIST", "DTD", "NotATask"]) is None
    rows, _ = comparison(
        "ViT-B-32", {"Task Arithmetic": {"MNIST": 90.0, "DTD": 50.0}}, ["MNIST", "DTD"]
    )
    assert rows["Task Arithmetic (paper)"]["Avg"] == pytest.approx((97.3 + 50.4) / 2)
    assert rows["Task Arithmetic (ours - paper)"]["Avg"] == pytest.approx(70.0 - (97.3 + 50.4) / 2)
    assert (
        paper_row("ViT-L-14", "Task-wise AdaMerging") is None
        and paper_row("mini", "Task Arithmetic") is None
    )
    rows, signed = comparison("mini", {"Task Arithmetic": {"MNIST": 90.0}}, ["MNIST"])
    assert list(rows) == ["Task Arithmetic"] and not signed


def test_quoted_paper_rows_and_normalized_accuracy_by_each_row_s_own_experts(tmp_path):
    ours = {
        "Individual": {t: 80.0 for t in PAPER_TASKS},
        "Traditional MTL": None,
        "Task Arithmetic": {t: v + 1.0 for t, v in zip(PAPER_TASKS, PAPER_TA)},
    }
    rows, signed = comparison("ViT-B-32", ours, PAPER_TASKS)
    # quoted: the paper's row alone
    assert "Traditional MTL" not in rows and rows["Traditional MTL (paper)"]["Avg"] == 88.9
    assert "Traditional MTL (ours - paper)" not in rows
    paper_individual = paper_row("ViT-B-32", "Individual", PAPER_TASKS)
    references = {
        "Individual": ours["Individual"],
        "Task Arithmetic": ours["Individual"],
        "Task Arithmetic (paper)": paper_individual,
    }
    rows, per_task = with_normalized(rows, PAPER_TASKS, references)
    assert per_task["Task Arithmetic"]["SUN397"] == pytest.approx(100 * 56.2 / 80.0)
    # the paper's by the paper's experts
    assert per_task["Task Arithmetic (paper)"]["SUN397"] == pytest.approx(100 * 55.2 / 75.3)
    assert rows["Task Arithmetic (paper)"][NORMALIZED] == pytest.approx(
        np.mean([100 * a / b for a, b in zip(PAPER_TA, paper_individual.values())])
    )
    assert rows["Individual"][NORMALIZED] == 100.0 and "Individual" not in per_task
    assert (
        NORMALIZED not in rows["Task Arithmetic (ours - paper)"]
        and NORMALIZED not in rows["Traditional MTL (paper)"]
    )
    # results/<model>/table.md: the column where the Individual result is on the same test data

    folder = tmp_path / "mini"
    folder.mkdir()
    for name, accs, data in (
        ("individual", {"A": 50.0, "B": 80.0}, {"A": 1}),
        ("task_arithmetic", {"A": 25.0, "B": 60.0}, {"A": 1}),
        ("regmean", {"A": 40.0, "B": 40.0}, {"A": 2}),
    ):
        (folder / f"{name}.json").write_text(
            json.dumps({"accuracy": accs, "tasks": ["A", "B"], "test_data": data})
        )
    main(["--model", "mini", "--results-dir", str(tmp_path)])
    table = (folder / "table.md").read_text()
    assert "| Task Arithmetic | 25.0 | 60.0 | 42.5 | 62.5 |" in table  # (50 % + 75 %) / 2
    # other test data: not normalized
    assert "| RegMean | 40.0 | 40.0 | 40.0 | - |" in table


def test_markdown_table_keeps_its_plain_behaviour_and_csv_matches():
    rows = {"A": {"x": 10.0, "y": 20.0}, "B": {"x": 5.0}}
    assert markdown_table(rows, ["x", "y"]).splitlines() == [
        "| method | x | y | Avg |",
        "|---|---|---|---|",
        "| A | 10.0 | 20.0 | 15.0 |",
        "| B | 5.0 | - | - |",
    ]
    assert markdown_table(rows, ["x"], average=False, label="row").splitlines()[0] == "| row | x |"
    parsed = list(
        csv.reader(
            io.StringIO(csv_table({**rows, "C": {"x": 1.234, "y": 2.0, "Avg": 9.0}}, ["x", "y"]))
        )
    )
    assert parsed == [
        ["method", "x", "y", "Avg"],
        ["A", "10.0", "20.0", "15.0"],
        ["B", "5.0", "", ""],
        ["C", "1.23", "2.0", "9.0"],
    ]


# correlation, depth, splits -----------------------------------------------------------------------


def test_spearman_per_task_and_pooled_on_known_inputs():
    h = [0.1, 0.2, 0.3, 0.4, 0.5]
    report = correlation_report(
        {
            "up": (h, [1, 2, 3, 4, 5]),
            "down": (h, [5, 4, 3, 2, 1]),
            "swap": ([1, 2, 3, 4], [1, 3, 2, 4]),
        }
    )
    assert report["per_task"]["up"] == pytest.approx(1.0) and report["per_task"][
        "down"
    ] == pytest.approx(-1.0)
    assert report["per_task"]["swap"] == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    pooled = correlation_report(
        {"a": ([0.0, 1.0, 2.0], [0.0, 1.0, 2.0]), "b": ([3.0, 4.0], [3.0, 4.0])}
    )
    assert pooled["pooled"] == pytest.approx(1.0)
    assert np.isnan(
        correlation_report({"flat": ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])})["per_task"]["flat"]
    )
    bins = binned_means(np.arange(20.0), 2 * np.arange(20.0), bins=4)
    assert [b["count"] for b in bins] == [5, 5, 5, 5]
    assert [b["entropy"] for b in bins] == pytest.approx([2, 7, 12, 17]) and [
        b["loss"] for b in bins
    ] == pytest.approx([4, 14, 24, 34])


def test_a_value_on_a_decile_edge_falls_in_the_bin_below():
    # quantile edges 0, 2, 4: the median 2 is "at most half of the values lie above it", so it joins
    # the lower bin
    bins = binned_means(np.arange(5.0), np.arange(5.0), bins=2)
    assert [b["count"] for b in bins] == [3, 2] and [b["entropy"] for b in bins] == pytest.approx(
        [1.0, 3.5]
    )
    # one value: one bin
    assert binned_means(np.ones(4), np.arange(4.0)) == [{"entropy": 1.0, "loss": 1.5, "count": 4}]


def test_depth_profile_groups_entries_by_block():
    rows = [
        "model.positional_embedding",
        "model.visual.conv1.weight",
        "model.visual.proj",
        "model.visual.transformer.resblocks.0.ln_1.weight",
        "model.visual.transformer.resblocks.0.attn.in_proj_weight",
        "model.visual.transformer.resblocks.1.mlp.c_fc.weight",
        "model.visual.transformer.resblocks.2.ln_2.bias",
        "model.visual.ln_post.weight",
    ]
    values = torch.tensor(
        [[9, 9], [0.1, 0.3], [0.5, 0.5], [0.2, 0.2], [0.2, 0.4], [0.4, 0.4], [0.8, 0.6], [0.7, 0.7]]
    )
    profile = depth_profile(CoefficientTable(values, ["A", "B"], rows))
    # text-side row left out
    assert profile["groups"] == ["input", "block 0", "block 1", "block 2", "output"]
    assert profile["entries"] == [1, 2, 1, 1, 2]
    assert profile["per_task"]["B"] == pytest.approx([0.3, 0.3, 0.4, 0.6, 0.6])
    assert profile["mean"] == pytest.approx([0.2, 0.25, 0.4, 0.7, 0.6])
    assert profile["shallow_mean"] == pytest.approx(0.25) and profile["deep_mean"] == pytest.approx(
        0.7
    )
    assert depth_group("model.visual.transformer.resblocks.11.attn.out_proj.bias") == (
        12,
        "block 11",
    )
    with pytest.raises(ValueError, match="layer-wise"):
        depth_profile(CoefficientTable(values[:1], ["A", "B"]))


def test_generalization_splits_follow_the_paper_restricted_to_the_available_tasks():
    assert generalization_splits(PAPER_TASKS)["exp1"] == (
        ["SUN397", "Cars", "RESISC45", "DTD", "SVHN", "GTSRB"],
        ["MNIST", "EuroSAT"],
    )
    mini = ["SUN397", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
    assert generalization_splits(mini) == {
        "exp1": (["SUN397", "DTD", "SVHN", "GTSRB"], ["MNIST", "EuroSAT"]),
        "exp2": (["SUN397", "GTSRB", "EuroSAT", "DTD", "MNIST"], ["SVHN"]),
    }
    assert generalization_splits(["MNIST", "SVHN"]) == {}
    paper = _paper_generalization("ViT-B-32", "exp1", *generalization_splits(PAPER_TASKS)["exp1"])
    assert (
        paper["Layer-wise AdaMerging"]["EuroSAT"] == 56.1
        and paper["Layer-wise AdaMerging"]["Unseen avg"] == 70.0
    )
    assert _paper_generalization("ViT-B-32", "exp1", *generalization_splits(mini)["exp1"]) == {}


# end to end ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_mini_problem(tmp_path_factory.mktemp("experiments"))


def _argv(root, *extra):
    return mini_argv(root, "--steps", "2", *extra)


def _png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_table_then_the_analyses_on_its_results(mini, capsys):
    folder = mini / "results" / "mini"
    run(["main-table", *_argv(mini)])
    rows = list(csv.reader(io.StringIO((folder / "main_table.csv").read_text())))
    # every method, no paper rows for mini
    assert rows[0] == ["method", "MNIST", "SVHN", "EuroSAT", "Avg", "Norm."]
    assert len(rows) == 1 + len(METHODS)
    assert [r[0] for r in rows[1:7]] == [
        "Zero-shot",
        "Individual",
        "Traditional MTL",
        "Weight Averaging",
        "Fisher Merging",
        "RegMean",
    ]
    # normalized accuracy: each task's accuracy over the individual expert's, averaged
    saved = {
        name: json.loads((folder / f"{name}.json").read_text())["accuracy"]
        for name in ("individual", "regmean")
    }
    expected = (
        sum(100 * saved["regmean"][t] / saved["individual"][t] for t in saved["individual"]) / 3
    )
    assert float(rows[6][5]) == pytest.approx(expected, abs=0.006) and float(rows[2][5]) == 100.0
    md = (folder / "main_table.md").read_text()
    assert (
        "| Layer-wise AdaMerging++ |" in md
        and "| method (average %) | ours | paper ViT-B-32 | paper ViT-L-14 |" in md
    )
    assert json.loads((folder / "layer_wise_adamerging.json").read_text())["config"]["steps"] == 2

    stamp = (folder / "task_arithmetic.json").stat().st_mtime_ns
    run(["main-table", *_argv(mini, "--skip-existing", "--methods", "task_arithmetic,zeroshot")])
    assert (
        folder / "task_arithmetic.json"
    ).stat().st_mtime_ns == stamp and "reusing" in capsys.readouterr().out
    run(
        [
            "main-table",
            *_argv(
                mini,
                "--skip-existing",
                "--methods",
                "task_arithmetic",
                "--test-split",
                "EuroSAT=test",
            ),
        ]
    )
    # another test-split choice: rerun
    assert (folder / "task_arithmetic.json").stat().st_mtime_ns != stamp
    # other settings: rerun
    run(
        [
            "main-table",
            *_argv(mini, "--skip-existing", "--methods", "task_wise_adamerging", "--steps", "3"),
        ]
    )
    assert json.loads((folder / "task_wise_adamerging.json").read_text())["config"]["steps"] == 3

    report = run(["entropy-loss", *_argv(mini, "--samples", "20")])
    saved = json.loads((folder / "entropy_vs_loss.json").read_text())
    assert (
        saved["samples"] == {"MNIST": 20, "SVHN": 20, "EuroSAT": 20}
        and len(saved["per_sample"]["SVHN"]["loss"]) == 20
    )
    assert {t: r["n_images"] for t, r in saved["test_data"].items()} == {
        "MNIST": 30,
        "SVHN": 30,
        "EuroSAT": 30,
    }
    assert saved["spearman"]["pooled"] == pytest.approx(report["spearman"]["pooled"]) and _png(
        folder / "entropy_vs_loss.png"
    )

    coeffs = run(["coefficients", *_argv(mini)])
    assert coeffs["depth"]["groups"] == [
        "input",
        "block 0",
        "block 1",
        "block 2",
        "block 3",
        "output",
    ]
    assert coeffs["task_vectors"]["cosine"][0][0] == pytest.approx(1.0)
    for kind in ("heatmap", "depth", "cosine"):
        assert _png(folder / f"coefficients_{kind}.png")

    with pytest.raises(ValueError, match="no published coefficients"):
        run(["published", *_argv(mini)])


def test_generalization_robustness_and_ablations_keep_their_runs_apart(mini):
    folder = mini / "results" / "mini"
    gen = run(
        [
            "generalization",
            *_argv(
                mini,
                "--eval-tasks",
                "EuroSAT",
                "--methods",
                "task_arithmetic,layer_wise_adamerging",
            ),
        ]
    )
    assert gen["custom"]["seen"] == ["MNIST", "SVHN"] and gen["custom"]["unseen"] == ["EuroSAT"]
    # main-table ran first on the same test data: its individual.json normalizes each group
    assert (
        "| method | MNIST | SVHN | Seen avg | EuroSAT | Unseen avg | Seen norm. | Unseen norm. |"
        in (folder / "generalization.md").read_text()
    )
    individual = json.loads((folder / "individual.json").read_text())["accuracy"]
    row = gen["custom"]["rows"]["Task Arithmetic"]
    assert row["Unseen norm."] == pytest.approx(100 * row["EuroSAT"] / individual["EuroSAT"])
    # a variant's run: results/<model>/runs/<experiment>/<variant>/<method>.json, its .state.pt
    # beside it
    run_file = json.loads(
        (folder / "runs/generalization/custom/layer_wise_adamerging.json").read_text()
    )
    assert run_file["eval_tasks"] == ["EuroSAT"] and run_file["config"]["run_dir"] == str(
        folder / "runs/generalization/custom"
    )
    assert (folder / "runs/generalization/custom/layer_wise_adamerging.state.pt").is_file()
    assert not (folder / "runs/generalization/custom/mini").exists()

    rob = run(
        [
            "robustness",
            *_argv(
                mini,
                "--corruptions",
                "contrast",
                "--methods",
                "task_arithmetic,layer_wise_adamerging",
            ),
        ]
    )
    assert set(rob["summary"]["Task Arithmetic"]) == {"clean", "contrast"}
    assert rob["minus_ta"]["Layer-wise AdaMerging - TA"]["contrast"] == pytest.approx(
        rob["summary"]["Layer-wise AdaMerging"]["contrast"]
        - rob["summary"]["Task Arithmetic"]["contrast"]
    )
    assert (
        json.loads((folder / "runs/robustness/contrast/task_arithmetic.json").read_text())[
            "config"
        ]["corruption"]
        == "contrast"
    )
    assert "## contrast" in (folder / "robustness.md").read_text()

    abl = run(["ablations", *_argv(mini, "--fractions", "0.1,1")])
    assert set(abl["objective"]) == {"entropy", "supervised"} and set(abl["fractions"]) == {
        "0.1",
        "1",
    }
    # --steps 2: evaluated every step
    assert [s for s, _ in abl["trajectory"]["entropy"]] == [0, 1, 2]
    assert (
        json.loads((folder / "runs/ablations/fraction_0.1/layer_wise_adamerging.json").read_text())[
            "config"
        ]["adapt_fraction"]
        == 0.1
    )
    assert (
        _png(folder / "trajectory.png") and "## Fraction" in (folder / "ablations.md").read_text()
    )
    assert (
        "| objective | MNIST | SVHN | EuroSAT | Avg | Norm. |"
        in (folder / "ablations.md").read_text()
    )
    # variants never land beside the main results
    assert not (folder / "layer_wise_adamerging_supervised.json").exists()


def test_command_line_errors_are_one_line(mini, capsys):
    from adamerging.commands.experiments import main as experiments_main

    with pytest.raises(SystemExit) as exit_:
        experiments_main(["robustness", *_argv(mini, "--corruptions", "fog")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "fog" in err and "Traceback" not in err
    # the CLI prints it as one line and exits 2
    with pytest.raises(ValueError, match="main-table"):
        run(["nonsense"])


def _result(fmt: str, n: int = 26032, **config) -> dict:
    return {
        "test_data": {"SVHN": {"n_images": n, "paper_n_images": 26032}},
        "config": {"finetuned": [], "task": [], **config},
        "provenance": {"files": {"finetuned": {"SVHN": {"format": fmt}}}},
    }


def test_the_paper_delta_appears_only_like_for_like(tmp_path):
    """The paper's experts (task-vectors pickles) on its full test sets: compared with the paper.
    Subsampled test sets or users' own experts: no paper rows, and the table says why. FusionBench's
    Hugging Face experts: FusionBench's published averages."""
    import argparse

    from adamerging.commands.experiments.common import (
        FUSIONBENCH,
        PAPER,
        Context,
        reference,
        write_table,
    )
    from adamerging.run.config import RunConfig

    pickled = "torch.save pickled module src.modeling.ImageEncoder"
    assert reference({"m": _result(pickled)})[0] == PAPER
    sun = _result(pickled)
    sun["test_data"]["SUN397"] = {"n_images": 19850, "paper_n_images": [19700, 20100]}
    assert reference({"m": sun})[0] == PAPER  # within the paper's range
    against, why = reference({"m": _result(pickled, n=1000)})
    assert against is None and "SVHN 1000 of 26032" in why
    assert reference({"m": _result(pickled, finetuned=["SVHN=x.pt"])})[0] is None
    assert reference({"m": _result("Hugging Face folder")})[0] == FUSIONBENCH
    every = {"Task Arithmetic": {t: 70.0 for t in PAPER_TASKS}}
    rows, _ = comparison("ViT-B-32", every, list(PAPER_TASKS), FUSIONBENCH)
    assert rows["Task Arithmetic (paper)"] == {"Avg": 68.0}
    ours = {"Task Arithmetic": {"SVHN": 70.0}}
    rows, _ = comparison("ViT-B-32", ours, ["SVHN"], FUSIONBENCH)
    assert list(rows) == ["Task Arithmetic"]  # FusionBench's averages are over its 8 tasks
    base = RunConfig(model="ViT-B-32", results_dir=str(tmp_path))
    ctx = Context("main-table", argparse.Namespace(), base, [])
    for result, expected in [
        (_result(pickled), "Task Arithmetic (paper)"),
        (_result(pickled, n=1000), "Not compared with the paper's rows: the test sets"),
    ]:
        write_table(ctx, "t", "T", ours, ["SVHN"], 0.0, results={"task_arithmetic": result})
        md = (tmp_path / "ViT-B-32" / "t.md").read_text()
        assert expected in md
        assert ("(paper)" in md) == (expected == "Task Arithmetic (paper)")
