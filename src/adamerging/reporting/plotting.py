"""The one matplotlib set-up of the project: figures on the Agg canvas (no display, no pyplot state)
and their saving."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

# matplotlib is imported only when a figure is drawn (the scripts start faster without it)
if TYPE_CHECKING:
    from matplotlib.figure import Figure


DPI = 110


def figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A Figure of `width` x `height` inches on its own Agg canvas.

    `layout="constrained"` leaves room for suptitles and colorbars; `layout=None` lets `save(...,
    tight=True)` arrange the axes instead (the diagnostics plots).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path, tight: bool = False) -> Path:
    """Write `fig` as a PNG at `path` (DPI dots per inch), creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path
