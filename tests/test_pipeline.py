"""The entry scripts end to end on random-weight checkpoints and tiny fake datasets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_data import write_fake_dataset
from model_fixtures import MINI_TASKS, mini_argv, write_random_checkpoints

from adamerging.checkpoints.loading import load_checkpoint
from adamerging.commands import pipeline
from adamerging.commands.pipeline import parse_config
from adamerging.merging.tables import load_table
from adamerging.methods.registry import METHODS
from adamerging.methods.rules import Rule

ROOT = Path(__file__).resolve().parents[1]
TASKS = MINI_TASKS


def _argv(root, *extra, tasks="MNIST,SVHN,EuroSAT"):
    return mini_argv(root, "--overwrite", *extra, tasks=tasks)


def run(method, argv):
    """A method script's flags -> RunConfig -> pipeline.run."""
    return pipeline.run(method, parse_config(method, argv))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_and_writes_a_complete_result(mini, method):
    result = run(method, _argv(mini, "--steps", "3", "--eval-every", "2"))
    saved = json.loads((mini / "results" / "mini" / f"{method}.json").read_text())
    assert saved["accuracy"].keys() == set(TASKS) and saved["tasks"] == list(TASKS)
    assert abs(saved["average"] - sum(saved["accuracy"].values()) / 3) < 1e-9
    assert all(0 <= a <= 100 for a in saved["accuracy"].values())
    assert (
        saved["config"]["seed"] == 0
        and "torch" in saved["versions"]
        and saved["timings_s"]["total"] > 0
    )
    # data-based merges and the multi-task model have no lambdas table
    if isinstance(METHODS[method].merge, Rule):
        assert saved["coefficients"] is None and "merge_rule" in saved
    elif method != "individual":
        values = torch.tensor(saved["coefficients"]["values"])
        # the mini encoder has 62 entries
        rows = 62 if METHODS[method].granularity == "layer-wise" else 1
        assert tuple(values.shape) == (rows, 4) and (values[:, 0] == 1).all()
    if METHODS[method].merge.learns:
        adapt = saved["adaptation"]
        assert adapt["step_seconds_median"] > 0
        assert [r["step"] for r in adapt["trajectory"] if "accuracy" in r] == [0, 2, 3]
        assert len([r for r in adapt["trajectory"] if "loss" in r]) == 3
    assert result["average"] == saved["average"]


def test_baselines_use_their_defining_coefficients(mini):
    ta = run("task_arithmetic", _argv(mini))
    assert ta["coefficients"]["values"] == [[1.0, 0.3, 0.3, 0.3]]
    wa = run("weight_averaging", _argv(mini))
    assert wa["coefficients"]["values"][0][1:] == pytest.approx([1 / 3] * 3)
    zs = run("zeroshot", _argv(mini))
    assert zs["coefficients"]["values"] == [[1.0, 0.0, 0.0, 0.0]]


def test_learned_table_reloads_and_gives_the_same_accuracies(mini):
    learned = run("layer_wise_adamerging", _argv(mini, "--steps", "4", "--lr", "0.05"))
    table_file = mini / "results" / "mini" / "layer_wise_adamerging.json"
    assert load_table(table_file).lambdas.shape == (62, 3)
    before = table_file.read_bytes()
    # with --overwrite
    reloaded = run("layer_wise_adamerging", _argv(mini, "--coefficients", str(table_file)))
    assert reloaded["accuracy"] == pytest.approx(learned["accuracy"])
    assert reloaded["coefficients"]["values"] == learned["coefficients"]["values"]
    # the reload has a result of its own: the file it read is untouched, and it names that file
    assert (
        table_file.read_bytes() == before
        and reloaded["result_name"] == "layer_wise_adamerging_reloaded"
    )
    assert reloaded["provenance"]["files"]["coefficients"]["path"] == str(table_file)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_merged_writes_a_plain_state_dict(mini, tmp_path, suffix):
    out = tmp_path / f"merged{suffix}"
    run("task_arithmetic", _argv(mini, "--save-merged", str(out)))
    if suffix == ".pt":
        sd = torch.load(out, weights_only=True)  # loadable without this repo
    else:
        from safetensors.torch import load_file

        sd = load_file(str(out))
    theta0 = load_checkpoint(mini / "checkpoints/mini/zeroshot.pt").state_dict
    experts = [
        load_checkpoint(mini / f"checkpoints/mini/{t}/finetuned.pt").state_dict for t in TASKS
    ]
    key = "model.visual.proj"
    expected = theta0[key] + 0.3 * sum(e[key] - theta0[key] for e in experts)
    torch.testing.assert_close(sd[key], expected)
    assert len(sd) == 62


def test_oracle_and_published_runs_get_their_own_result_names(mini):
    run("task_wise_adamerging", _argv(mini, "--steps", "2", "--objective", "supervised"))
    assert (mini / "results/mini/task_wise_adamerging_supervised.json").exists()


def test_task_subset_and_order_and_clear_errors(mini):
    sub = run("ties_merging", _argv(mini, tasks="svhn,MNIST"))
    assert sub["tasks"] == ["SVHN", "MNIST"]
    with pytest.raises(ValueError, match="published"):
        run("layer_wise_adamerging", _argv(mini, "--coefficients", "published"))
    with pytest.raises(FileNotFoundError, match=r"DTD/finetuned\.pt"):
        run("task_arithmetic", _argv(mini, tasks="MNIST,DTD"))


def test_existing_result_is_kept_without_overwrite(mini):
    argv = [a for a in _argv(mini) if a != "--overwrite"]
    run("zeroshot", _argv(mini))
    run("zeroshot", argv)
    written = {p.name for p in (mini / "results" / "mini").glob("zeroshot*.json")}
    assert "zeroshot.json" in written and len(written) == 2


def test_scripts_run_as_commands(mini):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "src" / "main_task_arithmetic.py"), *_argv(mini)],
        capture_output=True,
        text=True,
        env=env,
        cwd=mini,
    )
    assert out.returncode == 0, out.stderr
    assert "| Task Arithmetic |" in out.stdout


def test_a_script_s_errors_are_one_line_and_its_help_names_the_flags(mini, monkeypatch, capsys):
    # the scripts' entry function, in-process (the process boundary: test_scripts_run_as_commands)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "src" / "main_ties_merging.py")])
    with pytest.raises(SystemExit) as bad:
        pipeline.main("ties_merging", _argv(mini, tasks="GTSRB"))
    err = capsys.readouterr().err
    assert bad.value.code == 2 and "GTSRB" in err and "Traceback" not in err
    monkeypatch.setattr(sys, "argv", [str(ROOT / "src" / "main_layer_wise_adamerging.py")])
    with pytest.raises(SystemExit) as shown:
        pipeline.main("layer_wise_adamerging", ["--help"])
    helptext = capsys.readouterr().out
    assert shown.value.code == 0 and helptext.startswith("usage: main_layer_wise_adamerging.py")
    for flag in [
        "--model",
        "--checkpoints",
        "--data-location",
        "--results-dir",
        "--tasks",
        "--device",
        "--batch-size",
        "--seed",
        "--save-merged",
        "--steps",
        "--lr",
        "--init",
        "--batch-size-adapt",
        "--batches-per-step",
        "--no-clamp",
        "--eval-every",
        "--coefficients",
    ]:
        assert flag in helptext


def test_vit_b32_user_story(tmp_path):
    """The real ViT-B/32 architecture (random weights) in the task-vectors layout: TA, TIES and the
    authors' published layer-wise table (158 rows) run, and published rows that are 0 leave theta_0.
    """
    tasks = {"SVHN": 10, "MNIST": 10}
    write_random_checkpoints(tmp_path / "checkpoints", "ViT-B-32", tasks, scale=0.01)
    for task in tasks:
        write_fake_dataset(task, tmp_path / "data", n_per_class=1, image_size=16)
    argv = [
        "--model",
        "ViT-B-32",
        "--checkpoints",
        str(tmp_path / "checkpoints"),
        "--data-location",
        str(tmp_path / "data"),
        "--results-dir",
        str(tmp_path / "results"),
        "--tasks",
        "SVHN,MNIST",
        "--no-progress",
    ]
    for method in ("task_arithmetic", "ties_merging"):
        result = run(method, argv)
        assert set(result["accuracy"]) == set(tasks)
        assert (tmp_path / "results" / "ViT-B-32" / f"{method}.json").exists()
    merged_path = tmp_path / "lw.safetensors"
    published = run(
        "layer_wise_adamerging",
        argv + ["--coefficients", "published", "--save-merged", str(merged_path)],
    )
    values = torch.tensor(published["coefficients"]["values"])
    assert values.shape == (158, 3)
    from safetensors.torch import load_file

    merged = load_file(str(merged_path))
    theta0 = load_checkpoint(tmp_path / "checkpoints/ViT-B-32/zeroshot.pt").state_dict
    keys = list(theta0)
    zero_rows = [j for j in range(158) if (values[j, 1:] == 0).all()]
    moved_rows = [
        j for j in range(158) if (values[j, 1:] > 0).all() and keys[j].startswith("model.visual.")
    ]
    assert zero_rows and moved_rows
    for j in zero_rows:
        assert torch.equal(merged[keys[j]], theta0[keys[j]]), keys[j]
    for j in moved_rows[:5]:
        assert not torch.equal(merged[keys[j]], theta0[keys[j]]), keys[j]


def test_results_table_collects_methods_in_paper_order(mini):
    from adamerging.commands.report import main as table_main

    run("task_arithmetic", _argv(mini))
    run("zeroshot", _argv(mini))
    table_main(["--model", "mini", "--results-dir", str(mini / "results")])
    text = (mini / "results" / "mini" / "table.md").read_text()
    assert text.index("| Zero-shot |") < text.index("| Task Arithmetic |")
    assert "| method | MNIST | SVHN | EuroSAT | Avg |" in text


def test_a_run_prints_its_normalized_accuracy_when_the_experts_result_is_there(
    mini, tmp_path, capsys
):
    argv = _argv(mini, "--results-dir", str(tmp_path / "results"))
    run("task_arithmetic", argv)
    assert "Norm." not in capsys.readouterr().out  # no individual.json yet
    individual = run("individual", argv)
    # the experts are the reference, not normalized
    assert "Norm." not in capsys.readouterr().out
    ta = run("task_arithmetic", argv)
    out = capsys.readouterr().out
    norm = sum(100 * ta["accuracy"][t] / individual["accuracy"][t] for t in TASKS) / len(TASKS)
    assert "| method | MNIST | SVHN | EuroSAT | Avg | Norm. |" in out and f" | {norm:.1f} |" in out
    run("task_arithmetic", [*argv, "--tasks", "MNIST,SVHN"])
    # a subset of the experts' tasks: still normalized
    assert "Norm." in capsys.readouterr().out
    saved = tmp_path / "results" / "mini" / "individual.json"
    experts = json.loads(saved.read_text())
    # the experts were scored on other SVHN test data
    experts["test_data"]["SVHN"]["n_images"] += 1
    saved.write_text(json.dumps(experts))
    run("task_arithmetic", argv)
    assert "Norm." not in capsys.readouterr().out


def test_generalization_corruption_and_data_fraction_flags(mini):
    gen = run(
        "layer_wise_adamerging",
        _argv(mini, "--steps", "2", "--eval-tasks", "EuroSAT", tasks="MNIST,SVHN"),
    )
    assert gen["tasks"] == ["MNIST", "SVHN"] and gen["eval_tasks"] == ["EuroSAT"]
    assert set(gen["accuracy"]) == {"MNIST", "SVHN", "EuroSAT"}
    assert len(gen["coefficients"]["values"][0]) == 3  # only the seen tasks are merged
    assert gen["average"] == pytest.approx((gen["accuracy"]["MNIST"] + gen["accuracy"]["SVHN"]) / 2)
    assert gen["unseen_average"] == gen["accuracy"]["EuroSAT"]
    clean = run("task_arithmetic", _argv(mini))
    noisy = run("task_arithmetic", _argv(mini, "--corruption", "gaussian_noise"))
    assert noisy["config"]["corruption"] == "gaussian_noise"
    assert set(noisy["accuracy"]) == set(clean["accuracy"])
    from adamerging.run.problem import load_problem

    problems = [
        load_problem(parse_config("task_arithmetic", _argv(mini, *extra)))
        for extra in ([], ["--corruption", "gaussian_noise"])
    ]
    for clean_task, noisy_task in zip(problems[0].data, problems[1].data):
        assert clean_task.images.shape == noisy_task.images.shape
        # the images really changed
        assert (clean_task.images.float() - noisy_task.images.float()).abs().mean() > 5
    # 4 images per task
    few = run("task_wise_adamerging", _argv(mini, "--steps", "2", "--adapt-fraction", "0.1"))
    assert few["config"]["adapt_fraction"] == 0.1
    with pytest.raises(ValueError, match="adapt-fraction"):
        run("task_wise_adamerging", _argv(mini, "--steps", "1", "--adapt-fraction", "0"))
    with pytest.raises(ValueError, match="unknown corruption"):
        run("task_arithmetic", _argv(mini, "--corruption", "fog"))


def test_results_record_each_tasks_test_data_and_the_test_split_flag_reaches_the_reader(
    mini, tmp_path
):
    import shutil

    from adamerging.runtime.errors import DatasetError

    result = run("task_arithmetic", _argv(mini, "--eval-tasks", "EuroSAT", tasks="MNIST,SVHN"))
    saved = json.loads((mini / "results" / "mini" / "task_arithmetic.json").read_text())
    assert saved["test_data"] == result["test_data"] and set(saved["test_data"]) == {
        "MNIST",
        "SVHN",
        "EuroSAT",
    }
    for task, record in saved["test_data"].items():
        assert (
            record["split"] == "test"
            and record["n_images"] == 40
            and Path(record["source"]).exists()
        ), (task, record)
    assert (
        saved["test_data"]["EuroSAT"]["test_split"] == "test"
        and saved["test_data"]["EuroSAT"]["chosen_by"] == "default"
    )
    # EuroSAT's validation copy, chosen by flag (one image fewer, so the count shows which was read)
    euro = mini / "data" / "EuroSAT_splits"
    shutil.copytree(euro / "test", euro / "val")
    try:
        next(p for p in sorted((euro / "val").rglob("*")) if p.is_file()).unlink()
        chosen = run("task_arithmetic", _argv(mini, "--test-split", "EuroSAT=val", tasks="EuroSAT"))
        assert chosen["test_data"]["EuroSAT"]["source"] == str(euro / "val")
        assert (
            chosen["test_data"]["EuroSAT"]["n_images"] == 39
            and chosen["test_data"]["EuroSAT"]["chosen_by"] == "--test-split"
        )
    finally:
        shutil.rmtree(euro / "val")
    with pytest.raises(DatasetError, match="MNIST: has a single test split"):
        run("task_arithmetic", _argv(mini, "--test-split", "MNIST=val"))


def test_ddp_and_open_clip_training_checkpoint_experts_merge_like_plain_ones(mini, tmp_path):
    from adamerging.run.experts import load_task_vectors

    plain = load_checkpoint(mini / "checkpoints/mini/MNIST/finetuned.pt").state_dict
    torch.save(
        {"epoch": 2, "name": "ft", "state_dict": {"module." + k: v for k, v in plain.items()}},
        tmp_path / "epoch_2.pt",
    )
    configs = [
        parse_config("task_arithmetic", _argv(mini, *extra))
        for extra in ([], ["--finetuned", f"MNIST={tmp_path / 'epoch_2.pt'}"])
    ]
    reference, wrapped = (load_task_vectors(c) for c in configs)
    assert all(torch.equal(reference.tau[k], wrapped.tau[k]) for k in reference.tau)


def test_a_result_says_what_made_it(mini):
    """The package version (and in a git checkout its commit and whether the tree had changes), the
    preprocessing actually used, and each expert's stored dtype."""
    import subprocess

    import adamerging

    result = run("task_arithmetic", _argv(mini))
    versions = result["versions"]
    assert versions["adamerging"] == adamerging.__version__
    inside = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if inside.returncode == 0:
        assert versions["git_commit"] == inside.stdout.strip()
        assert isinstance(versions["git_dirty"], bool)
    else:
        assert "git_commit" not in versions
    pre = result["preprocessing"]
    assert pre["resize"] == "shorter side to 32 px, bicubic" and "white" in pre["alpha"]
    assert len(pre["mean"]) == 3 and "257" in pre["16-bit"]
    experts = result["provenance"]["files"]["finetuned"]
    assert {r["dtype"] for r in experts.values()} == {"float32"}


def test_git_dirty_means_code_not_the_results_a_run_writes(tmp_path):
    import subprocess

    from adamerging.reporting.results import git_source

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "src").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "src" / "m.py").write_text("x = 1\n")
    (tmp_path / "results" / "r.json").write_text("{}\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    (tmp_path / "results" / "r.json").write_text('{"accuracy": 1}\n')
    assert git_source.__wrapped__(tmp_path / "src")["git_dirty"] is False
    (tmp_path / "src" / "m.py").write_text("x = 2\n")
    assert git_source.__wrapped__(tmp_path / "src")["git_dirty"] is True
