"""The method registry and `run(method, config)`: load, merge (or learn the merge), evaluate,
report.

A method is a few facts (which task vectors, which lambdas table or which granularity to learn, or
which merge rule gives its parameters; results name, title) in `METHODS`; everything else is shared,
so a fix lands once for every method.
`main` is the entry point of the `src/main_*.py` scripts.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from adamerging.checkpoints.hashing import FileHashes
from adamerging.checkpoints.hf_export import hf_config_from_open_clip, save_hf_checkpoint
from adamerging.checkpoints.loading import save_state_dict
from adamerging.merging.encoder import MergedEncoder
from adamerging.merging.tables import (
    LAYER_WISE,
    TASK_WISE,
    CoefficientTable,
    constant_table,
    load_table,
    one_hot_table,
    published_table,
)
from adamerging.merging.task_vectors import merge
from adamerging.methods.adamerging import (
    SEGMENT_FIELDS,
    AdaptationStopped,
    AdaptResult,
    ResumeError,
    adamerge,
    adaptation_subset,
)
from adamerging.methods.fisher import fisher_merging
from adamerging.methods.regmean import regmean
from adamerging.models.clip import VISUAL_PREFIX
from adamerging.models.evaluation import evaluate_accuracy
from adamerging.reporting.results import package_versions, results_path, saved_individual
from adamerging.reporting.run_log import TensorBoardLog, require_tensorboard, run_folder
from adamerging.reporting.tables import markdown_table, normalized_column
from adamerging.run.config import DEFAULT_LAM, RunConfig, build_parser, config_from_namespace
from adamerging.run.experts import load_multitask
from adamerging.run.problem import Problem, TaskData, load_problem
from adamerging.runtime.cli import command_name, run_cli
from adamerging.runtime.device import ieee_fp32
from adamerging.runtime.distributed import Ranks, setup
from adamerging.runtime.files import atomic_write, require_finite, write_json


@dataclass(frozen=True)
class Method:
    """Every fact of a merging method; `run` has no per-method branches."""

    name: str  # results file name (script name without `main_`)
    title: str  # row label in tables
    # "plain" task vectors, "ties"-selected ones, or "none" (a rule reading the experts itself)
    vectors: str = "plain"
    # fixed lambdas: "zero", "one-hot" (each expert alone), "average" (1/T), "lam" (--lam)
    table: str = "lam"
    # AdaMerging: learn a "task-wise" or "layer-wise" table (None: fixed table)
    granularity: str | None = None
    # key of the authors' table in published_merging_coefficients.json
    published: str | None = None
    # key of MERGE_RULES: merged parameters not of the form theta_0 + sum lambda tau
    rule: str | None = None

    def result_name(self, config: RunConfig) -> str:
        """The results file stem; variants get their own file, so they never replace the method's
        main result."""
        name = self.name
        if self.granularity and config.objective == "supervised" and not config.coefficients:
            name += "_supervised"
        if config.coefficients == "published":
            name += "_published"
        # a table file: never replace the result it may have been read from
        elif config.coefficients:
            name += "_reloaded"
        return name

    def result_title(self, config: RunConfig) -> str:
        """The row label of this run."""
        return self.title + (
            " (supervised oracle)" if self.result_name(config).endswith("_supervised") else ""
        )

    def learns(self, config: RunConfig) -> bool:
        """Whether this run learns its table (AdaMerging without --coefficients)."""
        return self.granularity is not None and not config.coefficients


METHODS = {
    m.name: m
    for m in [
        Method("zeroshot", "Zero-shot", table="zero"),
        Method("individual", "Individual", table="one-hot"),
        Method("weight_averaging", "Weight Averaging", table="average"),
        Method("task_arithmetic", "Task Arithmetic"),
        Method("ties_merging", "Ties-Merging", vectors="ties"),
        Method(
            "task_wise_adamerging",
            "Task-wise AdaMerging",
            granularity=TASK_WISE,
            published="tw_adamerging",
        ),
        Method(
            "task_wise_adamergingpp",
            "Task-wise AdaMerging++",
            vectors="ties",
            granularity=TASK_WISE,
            published="tw_adamergingpp",
        ),
        Method(
            "layer_wise_adamerging",
            "Layer-wise AdaMerging",
            granularity=LAYER_WISE,
            published="lw_adamerging",
        ),
        Method(
            "layer_wise_adamergingpp",
            "Layer-wise AdaMerging++",
            vectors="ties",
            granularity=LAYER_WISE,
            published="lw_adamergingpp",
        ),
        Method("fisher_merging", "Fisher Merging", vectors="none", rule="fisher"),
        Method("regmean", "RegMean", vectors="none", rule="regmean"),
        Method("multitask", "Traditional MTL", vectors="none", rule="multitask"),
    ]
}


def multitask(
    problem: Problem, merged: MergedEncoder, config: RunConfig
) -> tuple[dict[str, torch.Tensor], dict]:
    """The merge rule of `multitask`: the visual entries of the encoder fine-tuned on every task at
    once."""
    return merged.visual_params(load_multitask(config, problem.clip, problem.theta0)), {}


# The data-based rules: (problem, merged encoder, config) -> (merged visual parameters, record for
# the results)
MERGE_RULES: dict[
    str, Callable[[Problem, MergedEncoder, RunConfig], tuple[dict[str, torch.Tensor], dict]]
] = {
    "fisher": fisher_merging,
    "regmean": regmean,
    "multitask": multitask,
}


# The fixed-table rules: (config, tasks) -> lambdas table
TABLE_RULES: dict[str, Callable[[RunConfig, list[str]], CoefficientTable]] = {
    "zero": lambda config, tasks: constant_table(tasks, 0.0),
    "average": lambda config, tasks: constant_table(
        tasks, 1.0 / len(tasks) if config.lam is None else config.lam
    ),
    "lam": lambda config, tasks: constant_table(
        tasks, DEFAULT_LAM if config.lam is None else config.lam
    ),
}


def method(name: str) -> Method:
    """The registered method `name`; ValueError naming the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


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


def evaluate_tasks(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    problem: Problem,
    batch_size: int,
    tasks: Sequence[TaskData] | None = None,
    ranks: Ranks = Ranks(),
) -> dict[str, float]:
    """Accuracy (%) per task; under torchrun each rank evaluates its share and the results are
    gathered."""
    tasks = list(tasks or problem.all_data)
    out = {}
    for i, t in enumerate(tasks):
        if ranks.owns(i):
            out[t.name] = evaluate_accuracy(
                encoder, t.head, t.images, t.labels, problem.normalize, batch_size
            )
    out = ranks.merge_dicts(out)
    return {t.name: out[t.name] for t in tasks}


def fixed_table(m: Method, config: RunConfig, problem: Problem) -> CoefficientTable:
    """The lambdas of a run that does not learn them: --coefficients (published or a file), else the
    method's rule."""
    if config.coefficients == "published":
        if m.published is None:
            raise ValueError(
                f"{m.name}: the authors published coefficients only for the AdaMerging methods"
            )
        return published_table(m.published, problem.model).for_entries(
            problem.tasks, problem.entries, f"published {m.published}/{problem.model}"
        )
    if config.coefficients:
        return load_table(config.coefficients).for_entries(
            problem.tasks, problem.entries, config.coefficients
        )
    return TABLE_RULES[m.table](config, problem.tasks)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _state_io(
    config: RunConfig, name: str, ranks: Ranks
) -> tuple[Path, dict | None, Callable[[dict], None]]:
    """Load (for --resume) and save the adaptation state: <output dir>/<name>.state.pt, beside the
    result.

    Saving refuses (ValueError) a state holding a NaN/inf value rather than write it.
    """
    path = config.output_dir / f"{name}.state.pt"
    resume = None
    if config.resume:
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no saved state at {path}")
        # Adam's load_state_dict moves it to the device
        resume = torch.load(path, map_location="cpu", weights_only=True)

    def save(state: dict) -> None:
        if ranks.is_main:
            state = {**state, "table": state["table"].to_json()}
            require_finite(state, f"the AdaMerging state {path}")
            with atomic_write(path) as f:
                torch.save(state, f)

    return path, resume, save


def learn_table(
    m: Method,
    config: RunConfig,
    problem: Problem,
    merged: MergedEncoder,
    ranks: Ranks,
    evaluate: Callable,
    timings: dict[str, float],
    log: TensorBoardLog | None = None,
) -> tuple[AdaptResult, dict | None]:
    """AdaMerging on the problem's test images (optionally after the diagnostics); (result,
    diagnosis)."""
    diagnosis = None
    if config.diagnose:
        # only with --diagnose: spares every other run scipy's import
        from adamerging.methods.diagnostics import run_diagnostics

        diagnosis = run_diagnostics(
            problem, config, merged=merged, vectors=m.vectors, timings=timings, ranks=ranks
        )
    state_path, resume, save_state = _state_io(config, m.result_name(config), ranks)
    try:
        return (
            adamerge(
                merged,
                adaptation_subset(problem.data, config.adapt_fraction, config.seed),
                problem.normalize,
                config,
                m.granularity,
                evaluate=evaluate,
                resume=resume,
                save_state=save_state,
                ranks=ranks,
                log=log,
            ),
            diagnosis,
        )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"interrupted; lambdas and optimizer state saved to {state_path}: rerun with --resume"
        ) from None
    except ResumeError as e:
        raise ResumeError(f"{state_path}: {e}") from None
    except AdaptationStopped as stop:
        if stop.state is None:
            raise
        raise AdaptationStopped(
            f"{stop}; saved to {state_path}: {stop.advice}", stop.state
        ) from None


def merged_state(
    problem: Problem,
    table: CoefficientTable | None,
    params: dict[str, torch.Tensor] | None,
    device: str,
) -> dict[str, torch.Tensor]:
    """The whole merged encoder (`model.*` entries) on the host: theta(lambdas) of `table`, else
    theta_0 with a merge rule's visual `params`. The merge runs where the task vectors are
    (`device`), in IEEE fp32."""
    if table is not None:
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


def run(method_name: str, config: RunConfig) -> dict:  # noqa: C901
    """Run one method end to end with `config`, print its table, write and return its results JSON
    (dict).

    Errors a user can fix raise FileNotFoundError / CheckpointError / DatasetError / ValueError /
    KeyError with a one-line message; a non-finite AdaMerging step raises AdaptationStopped (state
    saved), and so does running out of device memory while adapting (elsewhere:
    torch.OutOfMemoryError, which the scripts turn into one line, cli.run_cli).
    """
    m = method(method_name)
    if m.rule and config.coefficients:
        raise ValueError(
            f"{m.name}: its parameters come from its own rule, not a coefficient table; drop"
            " --coefficients"
        )
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
        require_tensorboard()  # before anything loads
    # checks --device; under torchrun, this rank's GPU
    ranks, device, numerics = setup(config.device, config.precision)
    config = replace(config, device=device)
    seed_everything(config.seed)
    timings: dict[str, float] = {}
    started = time.perf_counter()
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
    evaluate = lambda encoder: evaluate_tasks(encoder, problem, config.batch_size, ranks=ranks)  # noqa: E731
    adaptation = diagnosis = rule_record = params = None
    log = (
        TensorBoardLog(
            run_folder(
                config.tensorboard,
                config.output_dir,
                config.results_dir,
                m.result_name(config),
                config.resume,
            )
        )
        if config.tensorboard and ranks.is_main
        else None
    )

    t0 = time.perf_counter()
    if m.learns(config):
        adaptation, diagnosis = learn_table(
            m, config, problem, merged, ranks, evaluate, timings, log
        )
        table = adaptation.table
        last = adaptation.trajectory[-1] if adaptation.trajectory else {}
        accs = (
            last["accuracy"]
            if "accuracy" in last
            else evaluate(merged.encoder(table.lambdas, config.precision))
        )
    # each expert theta_0 + tau_t, on its own task; under torchrun, on the rank that owns it
    elif m.table == "one-hot":
        table, accs = None, {}
        for i, t in enumerate(problem.data):
            if ranks.owns(i):
                accs.update(
                    evaluate_tasks(
                        merged.encoder(
                            one_hot_table(problem.tasks, t.name).lambdas, config.precision
                        ),
                        problem,
                        config.batch_size,
                        [t],
                    )
                )
        accs = ranks.merge_dicts(accs)
    # the merged parameters come from the rule, evaluated through the same merged encoder
    elif m.rule:
        table = None
        params, rule_record = MERGE_RULES[m.rule](problem, merged, config)
        accs = evaluate(merged.bind(params, config.precision))
    else:
        table = fixed_table(m, config, problem)
        accs = evaluate(merged.encoder(table.lambdas, config.precision))
    timings["merge_adapt_evaluate"] = time.perf_counter() - t0
    # a learned table's curves are written as it learns; a fixed one's accuracies at step 0
    if log is not None:
        if not m.learns(config):
            log.record(
                {"step": 0, "accuracy": accs, "avg_accuracy": sum(accs.values()) / len(accs)}, table
            )
        log.close()

    average = sum(accs[t] for t in problem.tasks) / len(problem.tasks)  # over the merged tasks
    if not ranks.is_main:
        return {"accuracy": accs, "average": average}
    if config.save_merged and (table is not None or params is not None):
        save_merged(merged_state(problem, table, params, config.device), problem, config)
        print(f"wrote the merged image encoder to {config.save_merged} ({config.save_format})")
    name = m.result_name(config)
    # with its normalized accuracy where the individual experts' result on the same test data is
    # there
    individual = (
        saved_individual(config.output_dir, problem.test_data) if m.name != "individual" else None
    )
    row, extra = normalized_column({m.result_title(config): accs}, problem.tasks, individual)
    print(markdown_table(row, problem.tasks + [t.name for t in problem.eval_data], extra=extra))
    timings["total"] = time.perf_counter() - started
    result = {
        "method": m.name,
        "title": m.title,
        "model": config.model,
        "tasks": problem.tasks,
        "accuracy": accs,
        "average": average,
        "eval_tasks": [t.name for t in problem.eval_data],
        "unseen_average": (
            sum(accs[t.name] for t in problem.eval_data) / len(problem.eval_data)
            if problem.eval_data and all(t.name in accs for t in problem.eval_data)
            else None
        ),
        "coefficients": table.to_json() if table is not None else None,
        "test_data": problem.test_data,
        "provenance": problem.provenance,
        "config": recorded_config(config, adaptation),
        "seed": config.seed,
        "versions": package_versions(),
        "timings_s": timings,
        "numerics": numerics,
    }
    if rule_record is not None:
        result["merge_rule"] = rule_record
    # which table file made the result
    if config.coefficients and config.coefficients != "published":
        table_file = FileHashes(None).record(config.coefficients, fmt="coefficient table (json)")
        result["provenance"] = {
            **problem.provenance,
            "files": {**problem.provenance["files"], "coefficients": table_file},
        }
    if diagnosis is not None:
        result["diagnostics"] = {
            k: diagnosis[k] for k in ("verdict", "checks", "spearman", "thresholds")
        }
    if adaptation is not None:
        result["adaptation"] = {
            "step_seconds_median": adaptation.step_seconds,
            "adapt_seconds": adaptation.total_seconds,
            "adapt_mode": adaptation.plan,
            "segments": adaptation.segments,
            "trajectory": adaptation.trajectory,
        }
    result["result_name"] = name
    path = results_path(config.output_dir, name, config.overwrite)
    # "diagnostics" may hold an undefined (NaN) correlation; every number of the result itself must
    # be finite
    require_finite({k: v for k, v in result.items() if k != "diagnostics"}, f"the results {path}")
    write_json(result, path)
    print(f"wrote {path}")
    return result


def main(method_name: str, argv: Sequence[str] | None = None) -> None:
    """Entry point of the scripts: parse the flags, run; user mistakes print one line (cli.run_cli's
    exit codes)."""
    run_cli(lambda args: run(method_name, parse_config(method_name, args)), argv)
