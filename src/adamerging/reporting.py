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
