"""Smoke test of the benchmark scripts on the `mini` model at the tiniest sizes, so they follow the
API.

The benchmarks are not part of the measured results; this only runs them end to end
(bench_adamerging, bench_merge_cost) or their parts that touch the package (bench_memory: writing
the checkpoints and the flags it passes to each method), a few seconds in all.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # bench_merge_cost pins one thread


def test_bench_adamerging_runs_engine_floor_interleaved_and_original_on_mini(tmp_path):
    numbers = _load("bench_adamerging").main(
        [
            "--model",
            "mini",
            "--device",
            "cpu",
            "--tasks",
            "2",
            "--images",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--interleave",
            "1",
            "--original-steps",
            "1",
            "--original-warmup",
            "0",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    for key in (
        "full_step_s",
        "merge_s",
        "forward_s",
        "backward_s",
        "floor_s",
        "original_s",
        "interleaved_engine_cpu_s",
        "interleaved_floor_cpu_s",
        "interleaved_pair_ratio_wall",
    ):
        assert numbers[key] > 0, key
    assert (tmp_path / "b.json").is_file()


def test_bench_merge_cost_variants_equal_the_engine_bit_for_bit_on_mini():
    rows = _load("bench_merge_cost").main(["--model", "mini", "--tasks", "2", "--repeats", "1"])
    assert len(rows) == 3
    assert all(r["same_params"] and r["same_grad"] and r["forward_ms"] >= 0 for r in rows)


def test_bench_memory_prepares_checkpoints_the_methods_load_and_passes_valid_flags(tmp_path):
    bench = _load("bench_memory")
    bench.prepare("mini", tmp_path, num_tasks=1)
    assert bench.prepared_tasks("mini", tmp_path) == 1
    sys.path.insert(0, str(bench.ROOT / "src"))
    from adamerging.commands.pipeline import parse_config
    from adamerging.run.problem import load_problem

    args = bench.argparse.Namespace(
        num_tasks=1,
        steps=1,
        adapt_batch=1,
        adapt_args="--adapt-mode per-task",
        train_images=32,
        train_batch_size=32,
    )
    for method in bench.METHODS:
        cmd = bench.method_command(method, "mini", tmp_path, args)
        assert cmd[1:4] == ["-m", "adamerging", method]
        config = parse_config(method, cmd[4:])  # every flag the runner passes still exists
    # the checkpoints it writes load (with TIES vectors too)
    problem = load_problem(config, "ties", {})
    assert problem.tasks == bench.TASKS[:1]
    from adamerging.run.train_data import train_samples

    # the train split
    assert config.train_images == 32 and [
        s.record["n_images"] for s in train_samples(config, problem)
    ] == [32]


def test_bench_fusionbench_runs_our_side_on_bench_memory_checkpoints(tmp_path):
    bench = _load("bench_fusionbench")
    with pytest.raises(SystemExit, match="bench_memory.py"):
        bench.main(
            ["--model", "mini", "--workdir", str(tmp_path), "--num-tasks", "1", "--sides", "ours"]
        )
    bench.bench_memory.prepare("mini", tmp_path, num_tasks=1)
    rows = bench.main(
        [
            "--model",
            "mini",
            "--workdir",
            str(tmp_path),
            "--num-tasks",
            "1",
            "--steps",
            "1",
            "--sides",
            "ours",
            "--limit-gb",
            "4",
            "--min-available-gb",
            "0.2",
        ]
    )
    assert (
        [r["side"] for r in rows] == ["ours"]
        and rows[0]["status"] == "ok"
        and rows[0]["peak_gb"] > 0
    )
    with pytest.raises(SystemExit, match="--fusion-python"):
        bench.main(
            [
                "--model",
                "mini",
                "--workdir",
                str(tmp_path),
                "--num-tasks",
                "1",
                "--sides",
                "fusionbench",
            ]
        )


def test_bench_checks_times_loading_hashing_and_the_norms_on_mini(tmp_path):
    numbers = _load("bench_checks").main(
        ["--model", "mini", "--num-tasks", "2", "--repeats", "1", "--workdir", str(tmp_path)]
    )
    assert numbers["tasks"] == 2 and numbers["files_gb"] > 0
    assert all(
        numbers[k] > 0
        for k in ("load_task_vectors_s", "norms_and_cosines_s", "hash_files_s", "hash_gb_per_s")
    )


def test_gpu_check_dry_run_writes_every_section_on_the_cpu(tmp_path):
    # compile is left out here (inductor's C++ build of the mini model takes about a minute on this
    # machine); tests/test_device.py checks compiled against eager steps, and `--dry-run` alone runs
    # it too
    report = _load("gpu_check").main(
        [
            "--out",
            str(tmp_path),
            "--dry-run",
            "--sections",
            "environment,correctness,speed,evaluation,memory",
        ]
    )
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (
        saved["sections"].keys()
        == report["sections"].keys()
        == {"environment", "correctness", "speed", "evaluation", "memory"}
    )
    assert not [name for name, section in saved["sections"].items() if "error" in section]
    assert (
        saved["sections"]["correctness"]["ok"]
        and saved["sections"]["environment"]["flags_fp32"]["cudnn_allow_tf32"] is False
    )
    assert {r["plan"] for r in saved["sections"]["memory"]["rows"].values()} >= {
        "fused",
        "per-task",
        "chunked, 32 images per chunk",
    }
    assert (
        saved["sections"]["speed"]["rows"]["fp32"]["step_over_floor"] > 0
        and saved["sections"]["speed"]["profile_fp32"]
    )


def test_gpu_check_keeps_finished_sections_when_one_fails(tmp_path, monkeypatch):
    gpu_check = _load("gpu_check")
    monkeypatch.setitem(
        gpu_check.SECTIONS, "correctness", lambda ctx, out: out.update(partial=1) or 1 / 0
    )
    gpu_check.main(["--out", str(tmp_path), "--dry-run", "--sections", "environment,correctness"])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert saved["environment"]["torch"] == torch.__version__
    assert saved["correctness"]["partial"] == 1 and saved["correctness"]["error"].startswith(
        "ZeroDivisionError"
    )


def test_bench_surgery_passes_valid_flags():
    bench = _load("bench_surgery")
    from adamerging.commands.pipeline import parse_config

    args = bench.argparse.Namespace(model="mini", num_tasks=2, steps=3, workdir="/nowhere")
    args.train_images, args.train_batch_size = 32, 32
    for label, (method, _) in bench.RUNS.items():
        config = parse_config(method, bench.command(label, args)[4:])
        assert config.surgery_steps == 3 and config.batches_per_step == 2
        assert (config.surgery is None) == (label == "layer_wise_adamerging")


def test_bench_adarank_passes_valid_flags():
    bench = _load("bench_adarank")
    from adamerging.commands.pipeline import parse_config

    args = bench.argparse.Namespace(model="mini", num_tasks=2, steps=3, workdir="/nowhere")
    args.train_images, args.train_batch_size = 32, 32
    for method in bench.RUNS:
        config = parse_config(method, bench.command(method, args)[4:])
        assert config.steps == 3 and config.batches_per_step == 2 and config.model == "mini"
