"""The package installs like a library: the wheel builds offline, holds the `adamerging` package
with its data and nothing else, installs into a fresh virtual environment without network, and its
commands run there."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib

from adamerging.__main__ import COMMANDS as SUBCOMMANDS
from adamerging.methods.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "adamerging"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMMANDS = PYPROJECT["project"]["scripts"]

# Hermetic pip: no config files (so no index, find-links or machine-wide constraints), no network,
# no prompts.
PIP_ENV = {
    **os.environ,
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_NO_INDEX": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
    "PYTHONPATH": "",
    "OMP_NUM_THREADS": "1",
}


def _requirements(lines) -> dict[str, str]:
    """{normalised name: specifier} of requirement lines (comments, blanks and self-references
    dropped)."""
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("adamerging"):
            name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", line).groups()
            out[re.sub(r"[-_.]+", "-", name).lower()] = spec.replace(" ", "")
    return out


def test_the_requirement_files_list_the_ranges_of_pyproject_and_constraints_pin_them():
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    runtime = _requirements(project["dependencies"] + extras["hf"] + extras["mini"])
    dev = _requirements(extras["dev"] + extras["tensorboard"])
    assert _requirements((ROOT / "requirements.txt").read_text().splitlines()) == runtime
    assert _requirements((ROOT / "requirements-dev.txt").read_text().splitlines()) == dev
    # the dev extra is everything the suite imports
    assert extras["dev"][0] == "adamerging[hf,mini,tensorboard]"
    pins = _requirements((ROOT / "constraints.txt").read_text().splitlines())
    unpinned = [name for name in {**runtime, **dev} if not pins.get(name, "").startswith("==")]
    assert not unpinned, f"constraints.txt pins no version of {unpinned}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline from a copy of the checkout's sources (the checkout itself stays
    clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "checkout"
    shutil.copytree(
        ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        env=PIP_ENV,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (path,) = (tmp / "dist").glob("adamerging-*.whl")
    return path


def test_the_wheel_holds_the_package_its_data_and_commands_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    version = re.search(r'__version__ = "(.+)"', (PACKAGE / "__init__.py").read_text()).group(1)
    # no src/main_*.py, no tests
    assert {n.split("/")[0] for n in names} == {"adamerging", f"adamerging-{version}.dist-info"}
    files = {
        f"adamerging/{p.relative_to(PACKAGE).as_posix()}"
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert files - set(names) == set(), "package files the wheel lacks"
    assert {n for n in names if n.startswith("adamerging/")} == files
    meta = zipfile.ZipFile(wheel).read(f"adamerging-{version}.dist-info/entry_points.txt").decode()
    assert all(f"{name} = {target}" in meta for name, target in COMMANDS.items())


def test_a_fresh_environment_gets_a_working_install_offline(wheel, tmp_path):
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependencies already installed here are visible there (as in a CUDA environment that has
    # them)
    Path(purelib, "existing.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(a) for a in args], capture_output=True, text=True, env=PIP_ENV, cwd=tmp_path
        )

    # every dependency, the extras' too, is satisfied by what is installed: pip plans the package
    # alone, no torch
    plan = run(python, "-m", "pip", "install", "--dry-run", f"{wheel}[hf,mini,tensorboard,dev]")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert re.search(r"Would install adamerging-\S+\s*$", plan.stdout), plan.stdout
    done = run(python, "-m", "pip", "install", "--no-deps", wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all((env / "bin" / name).is_file() for name in COMMANDS)

    usage = run(env / "bin" / "adamerging", "--help")
    assert (
        usage.returncode == 0
        and "layer_wise_adamerging" in usage.stdout
        and "adamerging-mini-build" in usage.stdout
    ), usage.stderr
    # in one process (each would import torch): every command's --help as its console script calls
    # it, and the package data
    check = run(
        python,
        "-c",
        f"""
import contextlib, io, sys
from importlib.metadata import entry_points
import adamerging
assert adamerging.__file__.startswith({purelib!r}), adamerging.__file__
for ep in entry_points(group="console_scripts"):
    if ep.dist.name == "adamerging":
        sys.argv, text = [ep.name, "--help"], io.StringIO()
        try:
            with contextlib.redirect_stdout(text):
                ep.load()()
        except SystemExit as e:
            assert e.code in (0, None), (ep.name, e.code)
        shown = text.getvalue()
        assert "--" in shown, (ep.name, shown[:200])   # its flags
        # named as typed
        assert ep.name + " " in shown and "python -m" not in shown.split("--")[0], shown[:200]
        print("help", ep.name)
from adamerging.mini import artefacts
from adamerging.merging.tables import published_table
from adamerging.models.clip import create_clip
from adamerging.reporting.paper import paper_tables
from adamerging.datasets.labels import task_templates
# the mini artefacts, sha256 as in their manifest
assert artefacts.verify() == [], artefacts.verify()
# with the canonical entry order
assert published_table("lw_adamerging", "ViT-B-32").lambdas.shape == (158, 8)
# zeroshot_prompts.json
assert "ViT-B-32" in str(paper_tables())
assert "{{c}}" in task_templates("MNIST", "nowhere")[0]
create_clip("mini")  # model_configs/mini.json
try:
    import main_task_arithmetic
except ModuleNotFoundError:
    print("data ok")
""",
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert (
        sorted(re.findall(r"^help (\S+)$", check.stdout, re.M)) == sorted(COMMANDS)
        and "data ok" in check.stdout
    )


def test_every_command_the_readmes_name_exists():
    pages = [ROOT / p for p in ("README.md", "checkpoints/README.md", "data/README.md")] + sorted(
        (ROOT / "docs").glob("*.md")
    )
    text = "\n".join(p.read_text() for p in pages)
    named = set(re.findall(r"\b(adamerging-[a-z]+(?:-[a-z]+)*)\b", text))
    assert named and named <= set(COMMANDS), f"not installed commands: {named - set(COMMANDS)}"
    for name in set(re.findall(r"python -m adamerging ([a-z][\w-]*)", text)):
        assert name in {*METHODS, *SUBCOMMANDS}, f"`python -m adamerging {name}`: no such name"
    for module in set(re.findall(r"python -m (adamerging\.[\w.]*)", text)):
        path = ROOT / "src" / Path(*module.split("."))
        runnable = (path / "__main__.py").is_file() or (
            'if __name__ == "__main__"' in path.with_suffix(".py").read_text()
        )
        assert runnable, f"`python -m {module}` runs nothing"


def test_the_installed_commands_are_the_subcommands_of_the_main_command():
    installed = {entry[1]: entry[0] for entry in SUBCOMMANDS.values()}
    assert set(installed) == set(COMMANDS) - {"adamerging"}
    assert all(COMMANDS[name].split(":")[0] == module for name, module in installed.items())
