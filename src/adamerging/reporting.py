"""Printing per-task tables and writing results JSON atomically."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Mapping, Sequence

from .checkpoints import atomic_write


def package_versions() -> dict[str, str]:
    import numpy
    import open_clip
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__, "numpy": numpy.__version__}


def markdown_table(rows: Mapping[str, Mapping[str, float]], tasks: Sequence[str], digits: int = 1) -> str:
    """One row per method: per-task accuracy and the average (computed over `tasks`)."""
    header = "| method | " + " | ".join(tasks) + " | Avg |"
    lines = [header, "|" + "---|" * (len(tasks) + 2)]
    for name, accs in rows.items():
        cells = [f"{accs[t]:.{digits}f}" if t in accs else "-" for t in tasks]
        present = [accs[t] for t in tasks if t in accs]
        avg = f"{sum(present) / len(present):.{digits}f}" if len(present) == len(tasks) else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {avg} |")
    return "\n".join(lines)


def write_json(data: dict, path: str | Path) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def results_path(results_dir: Path, model: str, method: str, overwrite: bool) -> Path:
    """results/<model>/<method>.json; an existing result is kept and the new one written beside it."""
    path = Path(results_dir) / model / f"{method}.json"
    if path.exists() and not overwrite:
        path = path.with_name(f"{method}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    return path


# Row order of the paper's tables; `<method>.json` files found under results/<model>/ fill them.
TABLE_ORDER = [
    ("zeroshot", "Zero-shot"), ("individual", "Individual"), ("weight_averaging", "Weight Averaging"),
    ("task_arithmetic", "Task Arithmetic"), ("ties_merging", "Ties-Merging"),
    ("task_wise_adamerging", "Task-wise AdaMerging"), ("task_wise_adamergingpp", "Task-wise AdaMerging++"),
    ("layer_wise_adamerging", "Layer-wise AdaMerging"), ("layer_wise_adamergingpp", "Layer-wise AdaMerging++"),
    ("layer_wise_adamerging_supervised", "Layer-wise AdaMerging, supervised oracle"),
]


def collect_results(results_dir: str | Path, model: str) -> tuple[dict[str, dict[str, float]], list[str]]:
    """{row title: per-task accuracy} for every method result present, and the task order."""
    folder = Path(results_dir) / model
    rows, tasks = {}, []
    for name, title in TABLE_ORDER:
        path = folder / f"{name}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            rows[title] = data["accuracy"]
            tasks = tasks or list(data["tasks"])
    return rows, tasks


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Collect results/<model>/<method>.json into one table (markdown).")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    rows, tasks = collect_results(args.results_dir, args.model)
    if not rows:
        raise SystemExit(f"no results under {Path(args.results_dir) / args.model}")
    table = markdown_table(rows, tasks)
    print(table)
    with atomic_write(Path(args.results_dir) / args.model / "table.md", "w") as f:
        f.write(f"# Results: {args.model}\n\nAccuracy (%) on each task's test split.\n\n{table}\n")


if __name__ == "__main__":
    main()
