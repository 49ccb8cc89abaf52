"""`run(method, config)`: one method end to end, as a short sequence of named steps (check the
flags, set up, load, merge, save the merged model, report), the same for every method; the
method's own facts and merge come from the registry (`methods.registry`). `main` is the entry point
of the `src/main_*.py` scripts and of `python -m adamerging METHOD`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from adamerging.checkpoints.hashing import FileHashes
from adamerging.checkpoints.hf_export import hf_config_from_open_clip, save_hf_checkpoint
from adamerging.checkpoints.loading import save_state_dict
from adamerging.merging.encoder import MergedEncoder
from adamerging.merging.tables import CoefficientTable
from adamerging.merging.task_vectors import merge
from adamerging.methods.job import Job, Outcome
from adamerging.methods.loop import SEGMENT_FIELDS, AdaptResult
from adamerging.methods.registry import Method, method
from adamerging.methods.surgery_training import apply_surgery
from adamerging.models.clip import VISUAL_PREFIX
from adamerging.reporting.results import package_versions, results_path, saved_individual
from adamerging.reporting.run_log import TensorBoardLog, require_tensorboard, run_folder
from adamerging.reporting.tables import markdown_table, normalized_column
from adamerging.run.config import RunConfig
from adamerging.run.experts import (
    check_resume_inputs,
    expert_paths,
    find_base,
    run_tasks,
    unseen_tasks,
)
from adamerging.run.flags import build_parser, config_from_namespace
from adamerging.run.heads import check_heads_buildable
from adamerging.run.problem import Problem, load_problem
from adamerging.run.tasks import check_data_present, check_named_experts
from adamerging.runtime.cli import command_name, run_cli
from adamerging.runtime.device import ieee_fp32
from adamerging.runtime.distributed import Ranks, setup
from adamerging.runtime.files import require_finite, require_writable, write_json


def parse_config(method_name: str, argv: Sequence[str] | None = None) -> RunConfig:
    """The RunConfig of a method script's flags (None: sys.argv[1:]); bad flags exit 2
    (argparse)."""
    description = (
        f"{method(method_name).title}: merge CLIP image encoders fine-tuned on several tasks,"
        " evaluate every task's test split."
    )
    typed = command_name("adamerging")
    # a main_*.py script implies its method
    prog = typed if typed.endswith(".py") else f"{typed} {method_name}"
    return config_from_namespace(build_parser(description, prog=prog).parse_args(argv))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(method_name: str, config: RunConfig) -> dict:
    """Run one method end to end with `config`, print its table, write and return its results JSON
    (dict).

    Errors a user can fix raise FileNotFoundError / CheckpointError / DatasetError / ValueError /
    KeyError with a one-line message; a non-finite AdaMerging step raises AdaptationStopped (state
    saved), and so does running out of device memory while adapting (elsewhere:
    torch.OutOfMemoryError, which the scripts turn into one line, cli.run_cli).
    """
    m = method(method_name)
    check_flags(m, config)
    started = time.perf_counter()
    ranks, config, numerics = start(config)
    check_inputs(config)
    job = load(m, config, ranks)
    t0 = time.perf_counter()
    outcome = m.merge(job)
    if config.surgery:
        outcome = apply_surgery(job, outcome)
    job.timings["merge_adapt_evaluate"] = time.perf_counter() - t0
    close_log(job, m, outcome)
    average = sum(outcome.accuracy[t] for t in job.problem.tasks) / len(job.problem.tasks)
    if not ranks.is_main:
        return {"accuracy": outcome.accuracy, "average": average}
    save_merged_model(job, outcome)
    print_row(m, job, outcome)
    job.timings["total"] = time.perf_counter() - started
    return write_result(result(m, job, outcome, numerics), job)


def check_flags(m: Method, config: RunConfig) -> None:
    """One-line errors for settings that cannot work, before anything loads."""
    m.check(config)
    if (
        config.save_merged
        and config.save_format == "hf"
        and Path(config.save_merged).suffix in (".safetensors", ".pt", ".bin")
    ):
        raise ValueError(
            "--save-format hf writes a folder (config.json + model.safetensors); --save-merged"
            f" {config.save_merged} names a file: give a folder, or drop --save-format hf for a"
            " state-dict file"
        )
    if config.tensorboard:
        require_tensorboard()
    if config.resume:
        stem = config.output_dir / m.result_name(config)
        check_resume_inputs(config, [Path(f"{stem}.state.pt"), Path(f"{stem}.surgery.state.pt")])
    check_named_experts(config, [*run_tasks(config), *unseen_tasks(config)])
    # where the run will write: refused now, not after the adaptation
    flag = "--run-dir" if config.run_dir else "--results-dir"
    require_writable(config.output_dir, flag, keep=False)
    if config.save_merged:
        merged = Path(config.save_merged)
        folder = merged if config.save_format == "hf" else merged.parent
        require_writable(folder, "--save-merged", keep=False)


def check_inputs(config: RunConfig) -> None:
    """Every expert and theta_0 found, a head or the weights to build it for every task, every
    task's data present: one-line errors naming all that is missing, before any model loads
    (after the device checks)."""
    tasks = run_tasks(config)
    expert_paths(config, tasks)
    find_base(config)
    check_heads_buildable(config, [*tasks, *unseen_tasks(config)])
    check_data_present(config, [*tasks, *unseen_tasks(config)])


def start(config: RunConfig) -> tuple[Ranks, RunConfig, dict]:
    """The device checks and set-up (under torchrun, this rank's GPU), the seeds; (ranks, the
    config on its resolved device, the numerics record)."""
    ranks, device, numerics = setup(config.device, config.precision)
    config = replace(config, device=device)
    seed_everything(config.seed)
    return ranks, config, numerics


def load(m: Method, config: RunConfig, ranks: Ranks) -> Job:
    """The problem (checkpoints, test images, heads) and its merged encoder, as the method's job."""
    timings: dict[str, float] = {}
    problem = load_problem(config, m.vectors, timings)
    merged = MergedEncoder(
        problem.clip.visual,
        problem.theta0,
        problem.tau,
        problem.entries,
        config.device,
        checkpointing=config.checkpointing,
        compile=config.compile,
    )
    name = m.result_name(config)
    log = None
    if config.tensorboard and ranks.is_main:
        folder = run_folder(
            config.tensorboard, config.output_dir, config.results_dir, name, config.resume
        )
        log = TensorBoardLog(folder)
    return Job(m.name, name, problem, merged, config, m.vectors, m.published, ranks, timings, log)


def close_log(job: Job, m: Method, outcome: Outcome) -> None:
    """--tensorboard: a learned table's curves were written as it learned; a fixed one's accuracies
    at step 0."""
    if job.log is None:
        return
    if not m.learns(job.config):
        accs = outcome.accuracy
        entry = {"step": 0, "accuracy": accs, "avg_accuracy": sum(accs.values()) / len(accs)}
        job.log.record(entry, outcome.table)
    job.log.close()


def save_merged_model(job: Job, outcome: Outcome) -> None:
    """--save-merged: the merged encoder of a table or a rule's parameters (none for a method
    without a single merged model)."""
    config = job.config
    if not config.save_merged or (outcome.table is None and outcome.params is None):
        return
    state = merged_state(job.problem, outcome.table, outcome.params, config.device)
    save_merged(state, job.problem, config)
    print(f"wrote the merged image encoder to {config.save_merged} ({config.save_format})")


def print_row(m: Method, job: Job, outcome: Outcome) -> None:
    """The run's row, with its normalized accuracy where the individual experts' result on the same
    test data is there."""
    problem, config = job.problem, job.config
    individual = (
        saved_individual(config.output_dir, problem.test_data) if m.name != "individual" else None
    )
    rows = {m.result_title(config): outcome.accuracy}
    row, extra = normalized_column(rows, problem.tasks, individual)
    print(markdown_table(row, problem.tasks + [t.name for t in problem.eval_data], extra=extra))


def result(m: Method, job: Job, outcome: Outcome, numerics: dict) -> dict:
    """The results JSON of the run."""
    problem, config, accs = job.problem, job.config, outcome.accuracy
    unseen = [t.name for t in problem.eval_data]
    out = {
        "method": m.name,
        "title": m.title,
        "model": config.model,
        "tasks": problem.tasks,
        "accuracy": accs,
        "average": sum(accs[t] for t in problem.tasks) / len(problem.tasks),
        "eval_tasks": unseen,
        "unseen_average": (
            sum(accs[t] for t in unseen) / len(unseen)
            if unseen and all(t in accs for t in unseen)
            else None
        ),
        "coefficients": outcome.table.to_json() if outcome.table is not None else None,
        "test_data": problem.test_data,
        "preprocessing": problem.preprocessing,
        "provenance": problem.provenance,
        "config": recorded_config(config, outcome.adaptation),
        "seed": config.seed,
        "versions": package_versions(),
        "timings_s": job.timings,
        "numerics": numerics,
        **outcome.record,
    }
    # which table file made the result
    if config.coefficients and config.coefficients != "published":
        table_file = FileHashes(None).record(config.coefficients, fmt="coefficient table (json)")
        files = {**problem.provenance["files"], "coefficients": table_file}
        out["provenance"] = {**problem.provenance, "files": files}
    if outcome.adaptation is not None:
        adaptation = outcome.adaptation
        out["adaptation"] = {
            "step_seconds_median": adaptation.step_seconds,
            "adapt_seconds": adaptation.total_seconds,
            "adapt_mode": adaptation.plan,
            "segments": adaptation.segments,
            "trajectory": adaptation.trajectory,
        }
    out["result_name"] = job.result_name
    return out


def write_result(data: dict, job: Job) -> dict:
    """Write the results JSON (beside an existing one unless --overwrite) and return it."""
    path = results_path(job.config.output_dir, job.result_name, job.config.overwrite)
    # "diagnostics" may hold an undefined (NaN) correlation; every number of the result itself must
    # be finite
    require_finite({k: v for k, v in data.items() if k != "diagnostics"}, f"the results {path}")
    write_json(data, path)
    print(f"wrote {path}")
    return data


def merged_state(
    problem: Problem,
    table: CoefficientTable | None,
    params: dict[str, torch.Tensor] | None,
    device: str,
) -> dict[str, torch.Tensor]:
    """The whole merged encoder (`model.*` entries) on the host: theta_0 with the merge's visual
    `params` where it gives them (merge rules, AdaRank), else theta(lambdas) of `table`. The merge
    runs where the task vectors are (`device`), in IEEE fp32."""
    if params is None and table is not None:
        with ieee_fp32():
            return {
                k: v.cpu()
                for k, v in merge(
                    problem.theta0, problem.tau, table.lambdas.to(device), problem.entries
                ).items()
            }
    return {
        k: (
            (
                params[k[len(VISUAL_PREFIX) :]]
                if k.startswith(VISUAL_PREFIX)
                else problem.theta0[k]
            ).cpu()
        )
        for k in problem.entries
    }


def save_merged(state: dict[str, torch.Tensor], problem: Problem, config: RunConfig) -> None:
    """--save-merged: the merged image encoder `state` (`model.*` entries) as a state dict or a
    Hugging Face folder.

    --save-format hf writes config.json + model.safetensors of a `CLIPVisionModelWithProjection`
    (`transformers` loads it with `from_pretrained`; `image_embeds` are this encoder's features).
    """
    if config.save_format == "hf":
        save_hf_checkpoint(config.save_merged, state, hf_config_from_open_clip(problem.clip))
    else:
        save_state_dict(state, config.save_merged)


def recorded_config(config: RunConfig, adaptation: AdaptResult | None) -> dict:
    """config.to_json() for the results JSON; a setting that changed between resumed step ranges is
    null there (the values used are in "adaptation" -> "segments"), so the config never claims an
    unused value."""
    out = config.to_json()
    for k in SEGMENT_FIELDS:
        if adaptation is not None and len({s[k] for s in adaptation.segments}) > 1:
            out[k] = None
    return out


def main(method_name: str, argv: Sequence[str] | None = None) -> None:
    """Entry point of the scripts: parse the flags, run; user mistakes print one line (cli.run_cli's
    exit codes)."""
    run_cli(lambda args: run(method_name, parse_config(method_name, args)), argv)
