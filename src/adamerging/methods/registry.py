"""The method registry: every method is one record (`Method`: its name, row title, task-vector
transform and merge), and `METHODS` is the one list of them, in the paper's row order (Table 2).

The report order, `python -m adamerging --help`, `run.sh` and the experiments derive from it. A new
method is one record here; a new kind of merge is a callable `Job -> Outcome` (see `job.py`) with
two facts: `learns` (it learns its parameters by steps, with a saved state) and `takes_table`
(--coefficients may replace what it computes by a given lambdas table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adamerging.merging.tables import LAYER_WISE, TASK_WISE
from adamerging.merging.transforms import TRANSFORMS
from adamerging.methods import surgery_training as surgery
from adamerging.methods.adamerging import Learned
from adamerging.methods.adarank import BASE_CART, BASE_TA
from adamerging.methods.adarank_training import SvdMerge
from adamerging.methods.fisher import fisher_merging
from adamerging.methods.fixed import EachExpert, FixedTable, average, scaled, zero
from adamerging.methods.regmean import regmean
from adamerging.methods.rules import Rule, multitask
from adamerging.models.objectives import OBJECTIVES
from adamerging.run.config import RunConfig


@dataclass(frozen=True)
class Method:
    """Every fact of a merging method; the pipeline has no per-method branches."""

    name: str  # results file name (a script's name without `main_`)
    title: str  # row label in tables
    merge: Any  # Job -> Outcome: FixedTable, EachExpert, Learned, Rule (see job.py)
    vectors: str = "plain"  # key of merging.transforms.TRANSFORMS
    published: str | None = None  # key of the authors' table in published_merging_coefficients.json

    def __post_init__(self) -> None:
        if self.vectors not in TRANSFORMS:
            raise ValueError(f"{self.name}: unknown task vectors {self.vectors!r}")

    @property
    def granularity(self) -> str | None:
        """The granularity of a learned lambdas table ("task-wise", "layer-wise"), else None."""
        return getattr(self.merge, "granularity", None)

    def learns(self, config: RunConfig) -> bool:
        """Whether this run learns its parameters (not a --coefficients reload)."""
        reloads = (self.merge.takes_table and config.coefficients) or config.masks
        return self.merge.learns and not reloads

    def result_name(self, config: RunConfig) -> str:
        """The results file stem; variants get their own file, so they never replace the method's
        main result."""
        name = self.name
        if self.learns(config):
            name += OBJECTIVES[config.objective].variant
        if config.coefficients == "published":
            name += "_published"
        # a table or masks file: never replace the result it may have been read from
        elif config.coefficients or config.masks:
            name += "_reloaded"
        return name + (surgery.SUFFIX[config.surgery] if config.surgery else "")

    def result_title(self, config: RunConfig) -> str:
        """The row label of this run."""
        title = self.title + (OBJECTIVES[config.objective].title if self.learns(config) else "")
        return title + (surgery.TITLE[config.surgery] if config.surgery else "")

    def check(self, config: RunConfig) -> None:
        """One-line ValueError, before anything loads, for settings this method cannot honour."""
        if config.coefficients and not self.merge.takes_table and isinstance(self.merge, Rule):
            raise ValueError(
                f"{self.name}: its parameters come from its own rule, not a coefficient table;"
                " drop --coefficients"
            )
        if config.coefficients == "published" and self.merge.takes_table and not self.published:
            raise ValueError(
                f"{self.name}: the authors published coefficients only for the AdaMerging methods"
            )
        if config.masks and not isinstance(self.merge, SvdMerge):
            raise ValueError(f"--masks: {self.name} learns no masks; it is for adarank's results")
        if hasattr(self.merge, "check"):
            self.merge.check(config, self.name)
        surgery.check_flags(config, not isinstance(self.merge, EachExpert), self.name)


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("zeroshot", "Zero-shot", FixedTable(zero)),
        Method("individual", "Individual", EachExpert()),
        Method("multitask", "Traditional MTL", Rule(multitask), vectors="none"),
        Method("weight_averaging", "Weight Averaging", FixedTable(average)),
        Method("fisher_merging", "Fisher Merging", Rule(fisher_merging, train_data=True), "none"),
        Method("regmean", "RegMean", Rule(regmean, train_data=True), vectors="none"),
        Method("task_arithmetic", "Task Arithmetic", FixedTable(scaled)),
        Method("ties_merging", "Ties-Merging", FixedTable(scaled), vectors="ties"),
        Method(
            "task_wise_adamerging",
            "Task-wise AdaMerging",
            Learned(TASK_WISE),
            published="tw_adamerging",
        ),
        Method(
            "task_wise_adamergingpp",
            "Task-wise AdaMerging++",
            Learned(TASK_WISE),
            vectors="ties",
            published="tw_adamergingpp",
        ),
        Method(
            "layer_wise_adamerging",
            "Layer-wise AdaMerging",
            Learned(LAYER_WISE),
            published="lw_adamerging",
        ),
        Method(
            "layer_wise_adamergingpp",
            "Layer-wise AdaMerging++",
            Learned(LAYER_WISE),
            vectors="ties",
            published="lw_adamergingpp",
        ),
        Method("cart", "CART", SvdMerge(BASE_CART, learns=False)),
        Method("adarank", "TA + AdaRank", SvdMerge(BASE_TA, learns=True)),
        Method("cart_adarank", "CART + AdaRank", SvdMerge(BASE_CART, learns=True)),
    ]
}


def method(name: str) -> Method:
    """The registered method `name`; ValueError naming the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def report_rows() -> list[tuple[str, str]]:
    """(results file stem, row title) of every row of the results table, in the paper's order: the
    methods, then the learned ones under the other objectives (the supervised oracle), then with
    Representation Surgery."""
    rows = [(m.name, m.title) for m in METHODS.values()]
    for objective in OBJECTIVES.values():
        if objective.variant:
            label = objective.title.strip(" ()")
            rows += [
                (m.name + objective.variant, f"{m.title}, {label}")
                for m in METHODS.values()
                if m.merge.learns
            ]
    # then each single-model method with surgery (a learned table reloaded from its own run too)
    for variant, suffix in surgery.SUFFIX.items():
        for m in METHODS.values():
            if isinstance(m.merge, EachExpert):
                continue
            rows.append((m.name + suffix, m.title + surgery.TITLE[variant]))
            if m.merge.learns:
                title = m.title + surgery.TITLE[variant] + " (reloaded table)"
                rows.append((m.name + "_reloaded" + suffix, title))
    return rows
