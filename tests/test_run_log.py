"""--tensorboard DIR: the event files hold exactly the results JSON's trajectory and coefficients; a
missing tensorboard package is one line and exit 2 before anything loads."""

import sys

import numpy as np
import pytest
from model_fixtures import MINI_TASKS, mini_argv, write_mini_problem
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from adamerging.commands import pipeline
from adamerging.models.clip import VISUAL_PREFIX


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_mini_problem(tmp_path_factory.mktemp("mini"), n_per_class=4)


def _run(method, root, *extra):
    return pipeline.run(
        method,
        pipeline.parse_config(
            method, mini_argv(root, "--overwrite", "--tensorboard", str(root / "tb"), *extra)
        ),
    )


def _scalars(folder):
    """{tag: [(step, value)]} of every event file in `folder`."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def f32(x):
    return float(np.float32(x))


def test_layer_wise_curves_equal_the_results_trajectory_and_coefficients(mini):
    result = _run("layer_wise_adamerging", mini, "--steps", "4", "--eval-every", "3")
    got = _scalars(mini / "tb" / "mini" / "layer_wise_adamerging")
    trajectory = result["adaptation"]["trajectory"]
    assert got["train/loss"] == [(r["step"], f32(r["loss"])) for r in trajectory if "loss" in r]
    evals = [r for r in trajectory if "accuracy" in r]
    assert [r["step"] for r in evals] == [0, 3, 4]
    for task in MINI_TASKS:
        assert got[f"accuracy/{task}"] == [(r["step"], f32(r["accuracy"][task])) for r in evals]
    assert got["accuracy/average"] == [(r["step"], f32(r["avg_accuracy"])) for r in evals]

    table = result["coefficients"]
    # the pretrained column dropped
    values = np.array(table["values"])[:, 1:]
    visual = [j for j, k in enumerate(table["entries"]) if k.startswith(VISUAL_PREFIX)]
    blocks = [
        j
        for j, k in enumerate(table["entries"])
        if k.startswith(VISUAL_PREFIX + "transformer.resblocks.1.")
    ]
    for i, task in enumerate(table["columns"][1:]):
        mean = got[f"lambdas/{task}/mean"]
        # once per step; the init first
        assert [s for s, _ in mean] == [0, 1, 2, 3, 4] and mean[0][1] == pytest.approx(0.3)
        for stat, fn in (("mean", np.mean), ("min", np.min), ("max", np.max)):
            # JSON rounds to 1e-6
            assert got[f"lambdas/{task}/{stat}"][-1][1] == pytest.approx(
                fn(values[visual, i]), abs=2e-6
            )
            assert got[f"lambdas_{task}/block_01/{stat}"][-1][1] == pytest.approx(
                fn(values[blocks, i]), abs=2e-6
            )
        assert {t.split("/")[1] for t in got if t.startswith(f"lambdas_{task}/")} == {
            "input",
            "block_00",
            "block_01",
            "block_02",
            "block_03",
            "output",
        }
    # the lambdas did move apart
    assert any(got[f"lambdas/{t}/max"][-1][1] != got[f"lambdas/{t}/min"][-1][1] for t in MINI_TASKS)
    # logging changes no number
    plain = pipeline.run(
        "layer_wise_adamerging",
        pipeline.parse_config(
            "layer_wise_adamerging",
            mini_argv(
                mini,
                "--overwrite",
                "--steps",
                "4",
                "--eval-every",
                "3",
                "--results-dir",
                str(mini / "plain"),
            ),
        ),
    )
    assert plain["coefficients"] == table and plain["adaptation"]["trajectory"] == trajectory


def test_task_wise_and_fixed_tables_and_reruns_never_mix_two_runs(mini):
    result = _run("task_wise_adamerging", mini, "--steps", "2")
    assert result["config"]["tensorboard"] == str(mini / "tb")
    got = _scalars(mini / "tb" / "mini" / "task_wise_adamerging")
    for task, value in zip(
        result["coefficients"]["columns"][1:], result["coefficients"]["values"][0][1:]
    ):
        assert got[f"lambdas/{task}"][-1] == (2, pytest.approx(value, abs=2e-6))
    # --resume continues in the same folder (the flag is an output setting: it may change on resume)
    _run("task_wise_adamerging", mini, "--steps", "3", "--resume")
    assert [
        s for s, _ in _scalars(mini / "tb" / "mini" / "task_wise_adamerging")["train/loss"]
    ] == [1, 2, 3]
    # a fixed table: its accuracies and lambdas at step 0; a second run of the same name goes beside
    # the first
    for _ in range(2):
        ta = _run("task_arithmetic", mini)
    folders = sorted(
        p.name for p in (mini / "tb" / "mini").iterdir() if p.name.startswith("task_arithmetic")
    )
    assert folders[0] == "task_arithmetic" and len(folders) == 2
    for folder in folders:
        got = _scalars(mini / "tb" / "mini" / folder)
        assert got["accuracy/MNIST"] == [(0, f32(ta["accuracy"]["MNIST"]))] and got[
            "lambdas/SVHN"
        ] == [(0, f32(0.3))]
        assert "train/loss" not in got


def test_without_the_tensorboard_package_one_line_and_exit_2_before_loading(
    mini, monkeypatch, capsys, tmp_path
):
    # `import tensorboard` now raises ImportError
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    argv = mini_argv(mini, "--tensorboard", str(tmp_path / "tb"), "--steps", "1")
    # loading would fail with another message
    argv[argv.index("--checkpoints") + 1] = str(tmp_path / "absent")
    with pytest.raises(SystemExit) as exit_:
        pipeline.main("layer_wise_adamerging", argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert (
        err.startswith("error: --tensorboard needs the tensorboard package")
        and "pip install tensorboard" in err
    )
    assert not (tmp_path / "tb").exists()
