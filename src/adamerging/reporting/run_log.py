"""Training curves in TensorBoard (`--tensorboard DIR`): the loss per step, the accuracies per
evaluation and the statistics of the merging coefficients lambdas, as TensorBoard event files
(FusionBench's default logger).

Tags (step: the AdaMerging step; 0 is before the first update; lambdas are those after the step's
update, the ones an evaluation at that step uses):

    train/loss
        per step: the step's objective (sum over tasks of the mean batch entropy; cross-entropy
        with --objective supervised)
    accuracy/<task>, accuracy/average
        per evaluation (start, every --eval-every steps, end), in %; the average is over the
        evaluated tasks (the trajectory's "avg_accuracy")
    lambdas/<task>
        task-wise: the task's lambda
    lambdas/<task>/{mean,min,max}
        layer-wise: over the visual entries (the text-side rows of the checkpoints never reach the
        forward and keep their initial value)
    lambdas_<task>/<group>/{mean,min,max}
        layer-wise, per depth group: input, block_00, block_01, ..., output

The values are the results JSON's "adaptation" -> "trajectory" and "coefficients" (as float32). A
run that does not learn its lambdas (the baselines, --coefficients) writes its accuracies and
lambdas at step 0.

Where: <DIR>/<model>/<result name>/, one run for `tensorboard --logdir DIR` (an experiment's variant
runs: <DIR>/<model>/runs/<experiment>/<variant>/<result name>/, as their results); --resume
continues there. Another run of the same name goes beside it, <result name>-<YYYYmmdd-HHMMSS>/, as
the results JSON does without --overwrite, so no curve mixes two runs. Written with tensorboard's
event writer (torch.utils.tensorboard): one event per record, flushed every 10 s, at each
evaluation and at exit.
"""

from __future__ import annotations

import atexit
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from adamerging.merging.tables import CoefficientTable
from adamerging.models.clip import VISUAL_PREFIX, depth_group

INSTALL = "pip install tensorboard (or pip install 'adamerging[tensorboard]')"


def require_tensorboard() -> None:
    """ValueError (one line) unless the `tensorboard` package that torch.utils.tensorboard writes
    with is installed."""
    try:
        # raises ImportError without the tensorboard package
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise ValueError(
            f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL}"
        ) from None


def run_folder(
    root: str | Path, output_dir: str | Path, results_dir: str | Path, name: str, resume: bool
) -> Path:
    """This run's folder: <root>/<output_dir relative to results_dir>/<name> (<root>/<model>/<name>,
    or for an experiment's variant <root>/<model>/runs/<experiment>/<variant>/<name>; a --run-dir
    elsewhere: its last part), or a timestamped sibling when that folder holds another run's events
    (unless `resume`)."""
    out, results = Path(output_dir).resolve(), Path(results_dir).resolve()
    folder = (
        Path(root) / (out.relative_to(results) if out.is_relative_to(results) else out.name) / name
    )
    if resume or not any(folder.glob("events.out.tfevents.*")):
        return folder
    stamped = folder.with_name(f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while stamped.exists():  # two runs within one second
        stamped, n = folder.with_name(f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    return stamped


def _group_tag(label: str) -> str:
    """'block 3' -> 'block_03' (so TensorBoard's alphabetical order is the depth order); 'input',
    'output' as they are."""
    kind, _, index = label.partition(" ")
    return f"{kind}_{int(index):02d}" if index else kind


class LambdaStats:
    """The lambdas' statistics of one table layout: {tag: value} of a table [R, T] (see the module's
    tags)."""

    def __init__(self, tasks: list[str], entries: list[str] | None):
        self.tasks = tasks
        self.visual = (
            None
            if entries is None
            else np.array([j for j, k in enumerate(entries) if k.startswith(VISUAL_PREFIX)])
        )
        groups: dict[tuple[int, str], list[int]] = {}
        for j in self.visual if self.visual is not None else []:
            groups.setdefault(depth_group(entries[j]), []).append(int(j))
        self.groups = [
            (_group_tag(label), np.array(rows)) for (_, label), rows in sorted(groups.items())
        ]

    def __call__(self, lambdas: np.ndarray) -> dict[str, float]:
        """lambdas [R, T] (float) -> {tag: value}."""
        if self.visual is None:
            return {f"lambdas/{t}": float(lambdas[0, i]) for i, t in enumerate(self.tasks)}
        out: dict[str, float] = {}
        for prefix, rows in [("lambdas/{}", self.visual)] + [
            (f"lambdas_{{}}/{tag}", rows) for tag, rows in self.groups
        ]:
            block = lambdas[rows]
            for stat, values in (
                ("mean", block.mean(0)),
                ("min", block.min(0)),
                ("max", block.max(0)),
            ):
                for t, v in zip(self.tasks, values.tolist()):
                    out[f"{prefix.format(t)}/{stat}"] = v
        return out


class TensorBoardLog:
    """The event file of one run: `record` a trajectory entry (and the lambdas as of its step);
    `close` at the end.

    `folder` is made when the log opens. ValueError (one line) when tensorboard is not installed.
    """

    def __init__(self, folder: str | Path):
        require_tensorboard()
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard.writer import FileWriter

        self.folder = Path(folder)
        self._summary = Summary
        self._writer = FileWriter(str(self.folder), flush_secs=10)
        self._stats: LambdaStats | None = None
        # lambdas are written once per step (a step's loss and evaluation share them)
        self._lambdas_step: int | None = None
        atexit.register(self.close)  # a stopped or interrupted run keeps its curves

    def record(self, entry: Mapping[str, Any], table: CoefficientTable | None = None) -> None:
        """Write one trajectory entry ({"step", "loss"} or {"step", "accuracy", "avg_accuracy"})
        and, once per step, the statistics of `table` (the lambdas as of that step; None: none, e.g.
        the individual experts)."""
        step = int(entry["step"])
        values: dict[str, float] = {}
        if "loss" in entry:
            values["train/loss"] = entry["loss"]
        if "accuracy" in entry:
            values.update({f"accuracy/{t}": a for t, a in entry["accuracy"].items()})
            values["accuracy/average"] = entry["avg_accuracy"]
        if table is not None and step != self._lambdas_step:
            if self._stats is None:
                self._stats = LambdaStats(list(table.tasks), table.entries)
            values.update(self._stats(table.lambdas.detach().cpu().double().numpy()))
            self._lambdas_step = step
        self._writer.add_summary(
            self._summary(
                value=[self._summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]
            ),
            step,
        )
        if "accuracy" in entry:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (again: nothing)."""
        self._writer.close()
        atexit.unregister(self.close)
