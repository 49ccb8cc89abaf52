"""Merge and adapt on seen tasks, evaluate unseen ones too (the paper's Table 4) ->
generalization.{md,json}"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from adamerging.commands.experiments.common import (
    COMPARED,
    Context,
    header,
    mean,
    meta,
    run_method,
    write_text,
)
from adamerging.methods.registry import METHODS
from adamerging.reporting.paper import paper_tables, with_paper
from adamerging.reporting.results import saved_individual
from adamerging.reporting.tables import NORMALIZED_TEXT, markdown_table, normalized
from adamerging.run.tasks import parse_tasks
from adamerging.runtime.files import write_json


def generalization_splits(available: Sequence[str]) -> dict[str, tuple[list[str], list[str]]]:
    """The paper's Table 4 splits (exp1, exp2), restricted to the available tasks (the mini
    benchmark lacks some of the 8); a split keeps at least 2 seen and 1 unseen task, else it is
    dropped."""
    out = {}
    for name, split in paper_tables()["generalization_ViT-B-32"].items():
        if not isinstance(split, dict) or "seen" not in split:
            continue
        seen = [t for t in split["seen"] if t in available]
        unseen = [t for t in split["unseen"] if t in available]
        if len(seen) >= 2 and unseen:
            out[name] = (seen, unseen)
    return out


NORMALIZED_COLUMNS = ("Seen norm.", "Unseen norm.")


def _seen_unseen_row(
    accs: Mapping[str, float],
    seen: Sequence[str],
    unseen: Sequence[str],
    individual: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """A Table 4 row: the seen and unseen tasks' accuracies and their averages, and their normalized
    averages where `individual` (the experts' accuracies on the same test data) covers the group."""
    row = {t: accs[t] for t in [*seen, *unseen] if t in accs}
    row["Seen avg"] = mean([accs[t] for t in seen])
    row["Unseen avg"] = mean([accs[t] for t in unseen])
    for label, group in zip(NORMALIZED_COLUMNS, (seen, unseen)):
        norm = normalized(accs, individual or {}, group)
        if norm:
            row[label] = norm["Avg"]
    return row


def _paper_generalization(
    model: str, split: str, seen: Sequence[str], unseen: Sequence[str]
) -> dict[str, dict]:
    """The paper's Table 4 rows of `split`, if our split is the paper's (ViT-B/32 only)."""
    paper = paper_tables()["generalization_ViT-B-32"].get(split)
    if (
        model != "ViT-B-32"
        or not paper
        or list(paper["seen"]) != list(seen)
        or list(paper["unseen"]) != list(unseen)
    ):
        return {}
    return {
        title: {
            **dict(zip(seen, r["seen"])),
            **dict(zip(unseen, r["unseen"])),
            "Seen avg": r["seen_avg"],
            "Unseen avg": r["unseen_avg"],
        }
        for title, r in paper["rows"].items()
    }


def _splits(ctx: Context) -> dict[str, tuple[list[str], list[str]]]:
    """The (seen, unseen) splits: --eval-tasks against the other tasks, else the paper's."""
    if ctx.base.eval_tasks:  # the user's own split: --eval-tasks are unseen, the other tasks seen
        unseen = parse_tasks(ctx.base.eval_tasks, Path(ctx.base.checkpoints) / ctx.model)
        seen = [t for t in ctx.tasks() if t not in unseen]
        if not seen:
            raise ValueError(
                f"generalization: no seen task left once the unseen ones ({', '.join(unseen)}) are"
                f" taken out of {ctx.tasks()}"
            )
        return {"custom": (seen, unseen)}
    splits = generalization_splits(ctx.tasks())
    if not splits:
        raise ValueError(
            "none of the paper's generalization splits has 2 seen and 1 unseen task among"
            f" {ctx.tasks()}: pass --eval-tasks UNSEEN (the other tasks are the seen ones)"
        )
    return splits


def _run_split(
    ctx: Context, methods: Sequence[str], split: str, seen: list[str], unseen: list[str]
) -> tuple[list[str], dict]:
    """Run the methods on one split: its markdown section and its JSON record (table printed)."""
    results = {
        m: run_method(ctx, m, ctx.runs(split), tasks=",".join(seen), eval_tasks=",".join(unseen))
        for m in methods
    }
    individual = saved_individual(ctx.folder, next(iter(results.values()))["test_data"])
    ours = {
        METHODS[m].title: _seen_unseen_row(r["accuracy"], seen, unseen, individual)
        for m, r in results.items()
    }
    normalized_columns = [c for c in NORMALIZED_COLUMNS if any(c in row for row in ours.values())]
    columns = [*seen, "Seen avg", *unseen, "Unseen avg", *normalized_columns]
    rows, signed = with_paper(
        ours, _paper_generalization(ctx.model, split, seen, unseen), columns, average=False
    )
    table = markdown_table(rows, columns, signed=signed, average=False)
    md = [f"## {split}: seen {', '.join(seen)}; unseen {', '.join(unseen)}", "", table, ""]
    if normalized_columns:
        md += [NORMALIZED_TEXT + " Here per group of tasks (seen, unseen).", ""]
    record = {
        "seen": seen,
        "unseen": unseen,
        "rows": ours,
        "runs": {m: r["path"] for m, r in results.items()},
    }
    print(table)
    return md, record


def _notes(model: str, splits: Mapping[str, tuple[list[str], list[str]]]) -> list[str]:
    """The closing markdown lines: what seen and unseen mean, and the paper's splits or rows."""
    notes = [
        "Seen tasks are merged and adapted on; unseen tasks are evaluated with the same merged"
        " encoder and their own zero-shot heads, never merged or adapted on (`--tasks SEEN"
        " --eval-tasks UNSEEN`)."
    ]
    if model != "ViT-B-32" or any(
        not _paper_generalization(model, s, *splits[s]) for s in splits if s != "custom"
    ):
        return notes + [
            "",
            "Splits: the paper's Table 4 (ViT-B/32) exp1 (seen SUN397, Cars, RESISC45, DTD, SVHN,"
            " GTSRB; unseen MNIST, EuroSAT) and exp2 (seen SUN397, Cars, GTSRB, EuroSAT, DTD,"
            " MNIST; unseen RESISC45, SVHN), each restricted to the tasks this model has. Paper"
            " (ViT-B/32) unseen averages: "
            + "; ".join(
                f"{s}: "
                + ", ".join(
                    f"{t} {r['unseen_avg']}"
                    for t, r in paper_tables()["generalization_ViT-B-32"][s]["rows"].items()
                )
                for s in ("exp1", "exp2")
            )
            + ".",
        ]
    return notes + [
        "",
        "`(paper)`: the paper's Table 4. "
        + paper_tables()["generalization_ViT-B-32"].get("note", ""),
    ]


def generalization(ctx: Context) -> dict:
    """Merge and adapt on seen tasks, evaluate on unseen ones too (the paper's Table 4)."""
    started = time.perf_counter()
    splits = _splits(ctx)
    methods = ctx.options.methods or list(COMPARED)
    md, out = [], {}
    for split, (seen, unseen) in splits.items():
        lines, out[split] = _run_split(ctx, methods, split, seen, unseen)
        md += lines
    notes = _notes(ctx.model, splits)
    text = (
        "\n".join(
            header(
                ctx,
                "Generalization to unseen tasks",
                started,
                sorted({t for s in splits.values() for t in s[0] + s[1]}),
            )
            + md
            + notes
        )
        + "\n"
    )
    write_text(ctx.folder / "generalization.md", text)
    write_json({**meta(ctx, started), "splits": out}, ctx.folder / "generalization.json")
    print(f"wrote {ctx.folder / 'generalization'}.md, .json")
    return out
