"""The paper's numbers (vendored `data/paper_tables.json`: Tables 2-4, the authors' logs, the
findings stated in the text) and our rows beside them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources

from adamerging.datasets.tasks import SUITES
from adamerging.reporting.tables import row_average

# Our row titles that the paper spells differently.
PAPER_TITLES = {"Zero-shot": "Pretrained"}


def paper_tables() -> dict:
    """The vendored paper_tables.json (Tables 2-4, the authors' logs)."""
    return json.loads(resources.files("adamerging.data").joinpath("paper_tables.json").read_text())


def paper_findings(model: str = "ViT-B-32") -> dict:
    """The numbers the paper states in its text for `model` (Sec. 3.2 and 5: the entropy-loss
    Spearman, the ablations, the coefficient ranges), without the "_" explanation keys; {} if it
    states none."""
    return {
        k: v
        for k, v in paper_tables().get(f"findings_{model}", {}).items()
        if not k.startswith("_")
    }


def surgery_logged(model: str, title: str) -> dict[str, float] | None:
    """The authors' logged accuracies of base merge `title` + Surgery on `model` (vendored from
    their repository's logs, `paper_tables.json` "surgery_logs"), or None where they logged none."""
    return paper_tables().get("surgery_logs", {}).get(model, {}).get(title)


def paper_row(
    model: str, title: str, tasks: Sequence[str] | None = None
) -> dict[str, float] | None:
    """The paper's row `title` (our spelling) for `model`, restricted to `tasks`, or None if not
    reported; for rows the paper lacks, a later paper's 8-task average ("reported_rows"); for
    tasks outside its 8, a later paper's 14- or 20-task average (`suite_row`) or None.

    "Avg" is the paper's printed average when `tasks` are all 8 of its tasks, else the mean over
    `tasks`.
    """
    tables = paper_tables()
    row = tables.get(model, {}).get(PAPER_TITLES.get(title, title))
    tasks = list(tasks) if tasks is not None else list(tables["task_order"])
    if not set(tasks) <= set(tables["task_order"]):
        # a merge of other tasks is not the paper's setting; a suite's reported average, if any
        return suite_row(model, title, tasks)
    if row is None:
        # a later paper's reported 8-task average (AdaRank, CART): only for all 8 tasks
        reported = tables["reported_rows"].get(model, {}).get(title)
        return dict(reported) if reported and set(tasks) == set(tables["task_order"]) else None
    if not any(t in row for t in tasks):
        return None
    out = {t: row[t] for t in tasks if t in row}
    if set(tasks) == set(tables["task_order"]) and "Avg" in row:
        out["Avg"] = row["Avg"]
    return out


def suite_row(model: str, title: str, tasks: Sequence[str]) -> dict[str, float] | None:
    """A later paper's average for row `title` on `model` when `tasks` are a 14- or 20-task suite
    (`paper_tables.json` "reported_suites": Iso-CTS, Table 1), else None."""
    size = next((n for n, suite in SUITES.items() if set(suite) == set(tasks)), None)
    reported = paper_tables()["reported_suites"].get(model, {}).get(str(size), {}).get(title)
    return dict(reported) if reported else None


def with_paper(
    ours: Mapping[str, Mapping[str, float] | None],
    paper: Mapping[str, Mapping[str, float] | None],
    columns: Sequence[str],
    average: bool = True,
) -> tuple[dict[str, dict[str, float]], set[str]]:
    """Each of our rows, then the paper's row `<title> (paper)` and `<title> (ours - paper)` where
    the paper has one.

    An entry of `ours` that is None is a row we only quote: the paper's row alone. Returns the rows
    and the names of the difference rows (for `markdown_table(signed=...)`). With `average`, every
    row gets an "Avg" (ours: the mean over `columns`; the paper: its own when given).
    """

    def averaged(row: Mapping[str, float]) -> dict[str, float]:
        out = dict(row)
        if average and row_average(row, columns) is not None:
            out["Avg"] = row_average(row, columns)
        return out

    rows: dict[str, dict[str, float]] = {}
    signed: set[str] = set()
    for title, accs in ours.items():
        if accs is not None:
            rows[title] = averaged({c: accs[c] for c in columns if accs.get(c) is not None})
        if not paper.get(title):
            continue
        theirs = rows[f"{title} (paper)"] = averaged(paper[title])
        if accs is not None:
            mine = rows[title]
            rows[f"{title} (ours - paper)"] = {
                c: mine[c] - theirs[c]
                for c in [*columns, "Avg"]
                if mine.get(c) is not None and theirs.get(c) is not None
            }
            signed.add(f"{title} (ours - paper)")
    return rows, signed
