"""Users' own tasks: an ImageFolder tree `DIR/<split>/<class>/...` with optional classnames.txt and
templates.txt (`--task NAME=DIR`)."""

from __future__ import annotations

from pathlib import Path

from adamerging.datasets.folders import image_folder, read_lines
from adamerging.datasets.tasks import Split
from adamerging.runtime.errors import DatasetError

# Generic prompts for a user task without templates.txt (the first two of CLIP's ImageNet set).
DEFAULT_USER_TEMPLATES: tuple[str, ...] = ("a photo of a {c}.", "a photo of the {c}.")


def read_image_folder_task(name: str, folder: str | Path, split: str = "test") -> Split:
    """A user's task: an ImageFolder tree `folder/<split>/<class>/<images>` (any depth below the
    class).

    Classes are the sorted sub-folder names (label i = i-th folder, as ImageFolder); their names are
    the folder names with `_` as spaces, or the lines of `folder/classnames.txt` (one per class, in
    the same sorted-folder order). Templates: see `user_task_templates`.
    """
    # The name becomes part of cache file names and result keys: keep it a plain file-name word.
    if (
        not name
        or name.startswith(".")
        or any(ch in name for ch in "/\\=, ")
        or not name.isprintable()
    ):
        raise DatasetError(
            f"task name {name!r}: use letters, digits, '-', '_' or '.' (no '/', '=', ',' or spaces)"
        )
    folder = Path(folder).expanduser()
    layout = f"an ImageFolder tree {folder}/{split}/<class>/<images>"
    classes, labels, paths = image_folder(name, folder / split, layout)
    override = read_lines(folder / "classnames.txt")
    classnames = override if override is not None else [c.replace("_", " ") for c in classes]
    if len(classnames) != len(classes):
        raise DatasetError(
            f"{name}: {folder / split} has {len(classes)} class folders but"
            f" {folder / 'classnames.txt'} has {len(classnames)} names (one per class folder, in"
            f" sorted folder order: {classes[:5]}...)"
        )
    return Split(
        task=name,
        split=split,
        classnames=classnames,
        labels=labels,
        images=paths,
        source=str(folder / split),
    )


def user_task_templates(folder: str | Path) -> list[str]:
    """Prompt templates of a user task: `folder/templates.txt` (one per line, with `{c}`), else the
    defaults."""
    path = Path(folder).expanduser() / "templates.txt"
    lines = read_lines(path)
    if lines is None:
        return list(DEFAULT_USER_TEMPLATES)
    bad = [t for t in lines if "{c}" not in t]
    if bad:
        raise DatasetError(
            f"{path}: every template needs a '{{c}}' placeholder; these lack it: {bad[:3]}"
        )
    return lines
