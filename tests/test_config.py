"""The typed run configuration: flags build it, defaults live once, variants by
dataclasses.replace."""

import dataclasses
from pathlib import Path

import pytest

from adamerging.commands.pipeline import parse_config
from adamerging.methods.registry import METHODS
from adamerging.run.config import RunConfig
from adamerging.run.flags import build_parser, config_from_namespace


def test_no_flags_give_the_dataclass_defaults_and_every_field_has_a_flag():
    assert config_from_namespace(build_parser().parse_args([])) == RunConfig()
    assert parse_config("layer_wise_adamerging", []) == RunConfig()
    dests = {a.dest for a in build_parser()._actions} | {
        a.dest for a in build_parser(standalone_diagnostics=True)._actions
    }
    assert {f.name for f in dataclasses.fields(RunConfig)} <= dests


def test_flags_reach_their_fields_and_configs_compare_by_value():
    config = parse_config(
        "task_wise_adamerging",
        [
            "--steps",
            "20",
            "--task",
            "A=x",
            "--task",
            "B=y",
            "--diagnose-lambdas",
            "0,0.5",
            "--no-clamp",
            "--adapt-mode",
            "per-task",
            "--save-format",
            "hf",
        ],
    )
    assert (
        config.steps,
        config.task,
        config.diagnose_lambdas,
        config.clamp,
        config.adapt_mode,
        config.save_format,
    ) == (20, ("A=x", "B=y"), (0.0, 0.5), False, "per-task", "hf")
    assert dataclasses.replace(RunConfig(), steps=20) == RunConfig(steps=20) != RunConfig()
    # lists become tuples: hashable, equal
    assert hash(RunConfig(task=["A=x"])) == hash(RunConfig(task=("A=x",)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 3
    standalone = config_from_namespace(
        build_parser(standalone_diagnostics=True).parse_args(
            ["--samples", "7", "--vectors", "ties"]
        )
    )
    assert (standalone.diagnose_samples, standalone.vectors) == (7, "ties")


def test_bad_values_are_one_line_errors():
    with pytest.raises(
        ValueError,
        match=r"'objective' \(--objective\) must be one of \['entropy', 'supervised'\], got 'mse'",
    ):
        RunConfig(objective="mse")
    with pytest.raises(SystemExit):
        parse_config("task_arithmetic", ["--precision", "fp8"])
    with pytest.raises(ValueError, match="unknown method 'nonsense'"):
        parse_config("nonsense", [])


def test_every_method_is_described_by_registry_facts():
    from adamerging.merging.transforms import TRANSFORMS
    from adamerging.methods.adamerging import Learned
    from adamerging.methods.adarank_training import SvdMerge
    from adamerging.methods.fixed import EachExpert, FixedTable
    from adamerging.methods.rules import Rule

    for m in METHODS.values():
        assert m.vectors in TRANSFORMS and m.granularity in (None, "task-wise", "layer-wise")
        assert isinstance(m.merge, (FixedTable, EachExpert, Learned, Rule, SvdMerge))
        # the authors published a table for each AdaMerging method
        assert (m.published is not None) == isinstance(m.merge, Learned)
        # a rule reads the experts
        assert not isinstance(m.merge, Rule) or (m.granularity is None and m.vectors == "none")
    with pytest.raises(ValueError, match="unknown task vectors"):
        dataclasses.replace(METHODS["task_arithmetic"], vectors="dare")
    with pytest.raises(ValueError, match="--regmean-ratio must be in"):
        RunConfig(regmean_ratio=1.5)
    with pytest.raises(ValueError, match="--train-images must be >= 1"):
        parse_config("fisher_merging", ["--train-images", "0"])
    lw = METHODS["layer_wise_adamerging"]
    assert lw.result_name(RunConfig(objective="supervised")) == "layer_wise_adamerging_supervised"
    assert lw.result_name(RunConfig(coefficients="published")) == "layer_wise_adamerging_published"
    assert not lw.learns(RunConfig(coefficients="published")) and lw.learns(RunConfig())


def test_lambdas_sweep_is_sorted_and_deduplicated(capsys):
    # as the diagnostics parser did before the typed config: the sweep is an ordered set of
    # coefficients
    for parser, flag in (
        (build_parser(), "--diagnose-lambdas"),
        (build_parser(standalone_diagnostics=True), "--lambdas"),
    ):
        assert config_from_namespace(
            parser.parse_args([flag, "1,0.3,0,0.30,1.0"])
        ).diagnose_lambdas == (0.0, 0.3, 1.0)
        for bad in ("0.5,0.5", "0,x"):
            with pytest.raises(SystemExit):
                parser.parse_args([flag, bad])
            assert "--lambdas:" in capsys.readouterr().err


def test_a_run_writes_to_its_run_dir_else_to_results_dir_model():
    assert RunConfig(results_dir="r", model="mini").output_dir == Path("r/mini")
    assert RunConfig(
        results_dir="r", model="mini", run_dir="r/mini/runs/robustness/fog"
    ).output_dir == Path("r/mini/runs/robustness/fog")
    assert config_from_namespace(build_parser().parse_args(["--run-dir", "x"])).output_dir == Path(
        "x"
    )
