"""The package's import structure: no module imports one that imports it (directly or through
others), no module imports one of a higher floor, and every module has a docstring and a row in
docs/how-it-works.md.

Checked on the source by an AST walk, so it also sees imports inside functions (run only later, but
still a dependency a reader has to follow) and runs without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "adamerging"


def module_names(package: Path) -> dict[str, Path]:
    """{dotted module name: file} of every .py file below `package` (a package's name for its
    __init__)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from every import statement (module level or
    not).

    `from . import x` and `from .m import x` count `m.x` when it is a module; importing a submodule
    also runs the `__init__` of each package on the way that the importer is not already inside.
    """
    modules = module_names(package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        # the importer's package
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (
                    ".".join(
                        here[: len(here) - node.level + 1] + ([node.module] if node.module else [])
                    )
                    if node.level
                    else node.module or ""
                )
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # the target and the packages on its way
                    prefix = ".".join(parts[:i])
                    if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                        graph[name].add(prefix)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None when the graph has none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# The floors of docs/how-it-works.md, bottom up: a module imports its own floor and those below
# only.
FLOORS = (
    # one-job building blocks: files, formats, the merge, models, data, evaluation, reports
    {
        "_torchvision_compat",
        "checkpoints",
        "task_vectors_format",
        "merging",
        "merged_encoder",
        "models",
        "heads",
        "evaluation",
        "corruptions",
        "distributed",
        "device",
        "datasets",
        "hf_datasets",
        "hf",
        "hf_export",
        "reporting",
        "plotting",
        "cli",
        "run_log",
        "provenance",
    },
    # what a run is made of, and the data it needs
    {"config", "problem", "prepare", "download", "mini", "train_data"},
    # AdaMerging and its entropy checks; the data-based merges
    {"adaptation", "diagnostics", "fisher", "regmean"},
    {"pipeline", "experiments", "__main__"},  # the commands
)


def floor(module: str) -> int:
    """The floor of a module of the package, by its top-level name below `adamerging`."""
    # the package's __init__ only loads the shim
    top = module.split(".")[1] if "." in module else "_torchvision_compat"
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    raise AssertionError(
        f"{module}: not in tests/test_structure.py FLOORS; add it to the floor of its job"
    )


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    # the walk sees the package
    assert len(graph) > 30 and "adamerging.merging" in graph["adamerging.pipeline"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_higher_floor():
    graph = import_graph(PACKAGE)
    upward = [
        f"{m} (floor {floor(m)}) imports {t} (floor {floor(t)})"
        for m in sorted(graph)
        for t in sorted(graph[m])
        if floor(t) > floor(m)
    ]
    assert not upward, "upward imports: " + "; ".join(upward)


@pytest.mark.parametrize(
    "b_source", ["from . import a\n", "def f():\n    from .a import thing\n", "from .c import x\n"]
)
def test_the_checker_finds_a_cycle_direct_lazy_or_through_others(tmp_path, b_source):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import y\nthing = 1\n")
    (pkg / "b.py").write_text(b_source)
    (pkg / "c.py").write_text("import pkg.a\n")
    assert find_cycle(import_graph(pkg)) is not None
    (pkg / "b.py").write_text("y = 2\n")
    assert find_cycle(import_graph(pkg)) is None


def test_every_module_has_a_docstring_and_a_row_in_the_docs():
    table = (PACKAGE.parents[1] / "docs" / "how-it-works.md").read_text()
    for path in module_names(PACKAGE).values():
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path}: no module docstring"
        inside = path.relative_to(PACKAGE).parts
        # a subpackage: one row
        row = f"`adamerging/{inside[0]}/`" if len(inside) > 1 else f"`adamerging/{inside[0]}`"
        assert row in table, f"docs/how-it-works.md has no row {row} for {path}"
