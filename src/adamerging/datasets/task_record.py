"""`Task`: every fact of one built-in task, the record type of the task registry (`tasks.py`; the
14- and 20-task suites' records in `suite_tasks.py`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adamerging.datasets import preparers as prep
from adamerging.datasets import readers as read
from adamerging.datasets.classnames import ClassNames


@dataclass(frozen=True)
class Task:
    """Every fact of one built-in task.

    `test_splits`: where the reader may take the test split from, default first (folders under the
    task's folder, or RESISC45's list files); empty: one source. `ambiguous_test_split`: the two
    codebases of SPEC.md read different candidates (task-vectors val/, the AdaMerging fork test/):
    the default is the first present, with a warning when both are. `paper_test_size`: (fewest,
    most) test images of the paper's setting read without a warning. `hf_dataset`: (hub repo,
    config folder or None) of FusionBench's copy; `hf_expert`: the suffix of FusionBench's expert
    repos (`tanganke/clip-vit-base-patch32_<suffix>`). `prepare`: the recipe from the official
    downloads (`preparers.py`), `downloads`: what to download for it. `classes_at`: where the reader
    finds the class list, relative to the task folder, when not in the split it reads (messages).
    `prompts`: which prompt templates of data/zeroshot_prompts.json it uses (default: its own).
    `hf_test_split`: the split of the Hugging Face copy that serves as the test split. `variants`:
    other versions of the task a head may have been trained on, by class count (messages).
    For the suite tasks (`suite_task`) `paper_test_size` is the test-set size TALL masks and
    FusionBench report on.
    """

    name: str
    folder: str
    reader: read.Reader
    names: ClassNames
    paper_test_size: tuple[int, int] | None = None
    test_splits: tuple[str, ...] = ()
    ambiguous_test_split: bool = False
    hf_dataset: tuple[str, str | None] | None = None
    hf_expert: str | None = None
    prepare: Callable[[prep.Inputs, Path], None] | None = None
    downloads: str = ""
    classes_at: str | None = None
    prompts: str | None = None
    hf_test_split: str = "test"
    # the reader's raw class list names the classes of its labels, matched to the head's by name
    labels_by_name: bool = False
    variants: tuple[tuple[int, str], ...] = ()  # (class count, what another variant is): messages

    @property
    def templates_key(self) -> str:
        """The key of the task's prompt templates in data/zeroshot_prompts.json: `prompts`, else
        its name in lower case."""
        return self.prompts or self.name.lower()
