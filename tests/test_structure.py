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


# The floors of docs/how-it-works.md, bottom up: the package's folders. A module imports its own
# floor and those below only.
FLOORS = (
    # the runtime every layer uses: errors, file writing, device, ranks, the command-line handler
    {"_torchvision_compat", "runtime"},
    # building blocks, one job each: checkpoint files, models and heads, datasets, the merge,
    # tables and plots
    {"checkpoints", "models", "datasets", "merging", "reporting"},
    # what a run is made of: its configuration, the loaded problem; the mini benchmark's build
    {"run", "mini"},
    # the methods: AdaMerging, the data-based merges, the entropy diagnostics
    {"methods"},
    # the commands
    {"commands", "__main__"},
)


def floor(module: str) -> int:
    """The floor of a module of the package, by its folder (top-level name below `adamerging`)."""
    # the package's __init__ only loads the shim
    top = module.split(".")[1] if "." in module else "_torchvision_compat"
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    raise AssertionError(
        f"{module}: not in tests/test_structure.py FLOORS; put it in the folder of its job"
    )


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """{folder: the other folders its modules import} (`adamerging.run.problem` -> `run`)."""
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        top = module.split(".")[1] if "." in module else "_torchvision_compat"
        out.setdefault(top, set())
        for t in targets:
            other = t.split(".")[1] if "." in t else "_torchvision_compat"
            if other != top:
                out[top].add(other)
    return out


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    # the walk sees the package
    assert len(graph) > 30 and "adamerging.merging.tables" in graph["adamerging.commands.pipeline"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_folders_have_no_import_cycle_between_them():
    cycle = find_cycle(package_graph(import_graph(PACKAGE)))
    assert cycle is None, "folders importing each other: " + " -> ".join(cycle)


def test_the_package_root_holds_only_the_folders_of_the_layers():
    loose = sorted(
        p.name
        for p in PACKAGE.glob("*.py")
        if p.name not in ("__init__.py", "__main__.py", "_torchvision_compat.py")
    )
    assert not loose, f"modules outside the layers' folders: {loose}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders - {"data"} == set().union(*FLOORS) - {"_torchvision_compat", "__main__"}


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
        # a folder: one row
        row = f"`{inside[0]}/`" if len(inside) > 1 else f"`{inside[0]}`"
        assert row in table, f"docs/how-it-works.md has no row {row} for {path}"
