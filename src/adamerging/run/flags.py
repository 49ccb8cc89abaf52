"""The command line of a run: the argparse parser built from `RunConfig`'s fields (a flag, its help
and its default written once, on the field), and which settings a `--resume`d run may change."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from adamerging.run.config import GROUPS, RunConfig, flag_of


class _DefaultsOnce(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" only where the help text does not state its default itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "default" in text else super()._get_help_string(action)


def build_parser(
    description: str = "", standalone_diagnostics: bool = False, prog: str | None = None
) -> argparse.ArgumentParser:
    """The argparse parser of every RunConfig field, grouped as in GROUPS; `prog`: the command in
    its usage line.

    `standalone_diagnostics`: src/diagnose.py's flags (`--samples`, `--vectors`, ...; no
    `--diagnose`); otherwise the scripts' (`--diagnose-samples`, ...; no `--vectors`).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=_DefaultsOnce,
        # `--step 5` must not silently mean --steps
        allow_abbrev=False,
    )
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for f in dataclasses.fields(RunConfig):
        meta = f.metadata
        if standalone_diagnostics and f.name == "diagnose":
            continue
        if meta["standalone"] == "" and not standalone_diagnostics:
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        if isinstance(f.default, bool):
            kwargs["action"] = "store_true"
        elif meta["repeat"]:
            kwargs.update(action="append", default=[], metavar=meta["repeat"])
        else:
            kwargs["default"] = f.default
            kwargs["type"] = meta["parse"] or (type(f.default) if f.default is not None else str)
            if meta["choices"]:
                kwargs["choices"] = list(meta["choices"])
        groups[meta["group"]].add_argument(flag_of(f, standalone_diagnostics), **kwargs)
    return parser


def config_from_namespace(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of parsed flags (extra attributes of `args` are ignored)."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: v for k, v in vars(args).items() if k in names})


# Settings a `--resume`d run may change: the step budget, the learning rate, evaluation and save
# cadence, outputs, file locations and the speed/memory options. Every other field (a new field too,
# by default) defines the problem or the optimisation and must equal the saved run's.
RESUMABLE = frozenset(
    {
        "steps",
        "lr",
        "eval_every",
        "save_every",
        "resume",
        "no_progress",
        "overwrite",
        "results_dir",
        "run_dir",
        "save_merged",
        "save_format",
        "checkpoints",
        "data_location",
        "cache_dir",
        "batch_size",
        "device",
        "precision",
        "checkpointing",
        "compile",
        "adapt_mode",
        "adapt_chunk",
        "micro_batch_size",
        "diagnose",
        "diagnose_samples",
        "diagnose_lambdas",
        "diagnose_spearman",
        "diagnose_lambda_slack",
        "tensorboard",
        "allow_duplicate_experts",
        "surgery_steps",
        "surgery_lr",
        "surgery_features",
        "allow_foreign_experts",
    }
)


def _shown(f: dataclasses.Field, value: Any) -> str:
    """A setting as the user typed it: '--seed 0', '--no-clamp', 'no --corruption', '--task A=x
    --task B=y'."""
    flag = flag_of(f)
    if value is None or value is False or value == []:
        return f"no {flag}"
    if value is True:
        return flag
    if isinstance(value, list):
        return (
            " ".join(f"{flag} {v}" for v in value)
            if f.metadata["repeat"]
            else f"{flag} {','.join(map(str, value))}"
        )
    return f"{flag} {value}"


def resume_conflicts(saved: dict[str, Any], config: RunConfig) -> str | None:
    """One line listing the non-RESUMABLE settings where `config` differs from the saved run's
    (`saved`: RunConfig.to_json() of that run; a field it lacks counts as its default), or None when
    it may resume."""
    now = config.to_json()
    fields = [f for f in dataclasses.fields(RunConfig) if f.name not in RESUMABLE]
    was = {
        f.name: saved.get(f.name, list(f.default) if isinstance(f.default, tuple) else f.default)
        for f in fields
    }
    changed = [f for f in fields if was[f.name] != now[f.name]]
    if not changed:
        return None
    return (
        f"cannot resume: the saved run used {', '.join(_shown(f, was[f.name]) for f in changed)},"
        f" this one {', '.join(_shown(f, now[f.name]) for f in changed)}; rerun without --resume or"
        " with the same settings"
    )
