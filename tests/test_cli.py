"""The one command-line error handler: exit codes and one-line messages; and the experiments' reuse
rule."""

import dataclasses
from pathlib import Path

import pytest

import adamerging
from adamerging.run.config import RunConfig
from adamerging.runtime.cli import command_name, run_cli
from adamerging.runtime.errors import CheckpointError, DatasetError, RunStopped


def _raise(error: BaseException):
    def command(argv):
        raise error

    return command


@pytest.mark.parametrize(
    "error, code, text",
    [
        (FileNotFoundError("no zeroshot.pt in ckpt/"), 2, "error: no zeroshot.pt in ckpt/"),
        (
            CheckpointError("a.pt: entry 'x' has shape (2,)"),
            2,
            "error: a.pt: entry 'x' has shape (2,)",
        ),
        (DatasetError("dtd: no test split"), 2, "error: dtd: no test split"),
        # the message, not KeyError's quoted repr
        (KeyError("unknown task 'Foo'"), 2, "error: unknown task 'Foo'"),
        (ValueError("two\nlines"), 2, "error: two lines"),
        (
            RunStopped("non-finite loss at step 3; state saved"),
            3,
            "error: non-finite loss at step 3; state saved",
        ),
        # a stop wins over a user error
        (type("StoppedOnBadValue", (RunStopped, ValueError), {})("stopped"), 3, "error: stopped"),
        (
            KeyboardInterrupt("interrupted; state saved to s.pt"),
            130,
            "interrupted; state saved to s.pt",
        ),
    ],
)
def test_user_errors_print_one_line_and_exit_with_their_code(capsys, error, code, text):
    with pytest.raises(SystemExit) as exit_:
        run_cli(_raise(error), [])
    assert exit_.value.code == code
    err = capsys.readouterr().err.strip()
    assert err == text and "\n" not in err


def test_a_bug_keeps_its_traceback_and_success_passes_the_arguments():
    with pytest.raises(ZeroDivisionError):
        run_cli(_raise(ZeroDivisionError("bug")), [])
    seen = []
    run_cli(seen.append, ["--model", "mini"])
    assert seen == [["--model", "mini"]]


def test_a_saved_run_is_reused_only_for_an_equal_config():
    from adamerging.commands.experiments.common import same_run

    config = RunConfig(model="mini", steps=5, tasks="MNIST,SVHN")
    saved = {
        "config": (
            dataclasses.replace(
                config, overwrite=False, results_dir="elsewhere", no_progress=True
            ).to_json()
        )
    }
    # output-only settings differ
    assert same_run(saved, config)
    assert not same_run(saved, dataclasses.replace(config, steps=6))
    assert not same_run(saved, dataclasses.replace(config, tasks="MNIST"))
    # a result of another layout
    assert not same_run({"config": {**saved["config"], "old_flag": 1}}, config)


def test_a_misspelled_method_is_named_with_the_nearest_ones(capsys):
    from adamerging.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["task_aritmetic", "--model", "mini"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "unknown method or command 'task_aritmetic'; did you mean task_arithmetic" in err


@pytest.mark.parametrize(
    "argv0, expected",
    [
        # the installed command
        ("/env/bin/adamerging-prepare", "adamerging-prepare"),
        # the installed main command, `adamerging prepare`
        ("/env/bin/adamerging", "adamerging prepare"),
        # python -m adamerging prepare, or python -m adamerging.datasets.prepare
        (str(Path(adamerging.__file__).parent / "__main__.py"), "python -m adamerging prepare"),
        (
            str(Path(adamerging.__file__).parent / "datasets" / "prepare.py"),
            "python -m adamerging prepare",
        ),
        # a script, as argparse names it
        ("src/main_task_arithmetic.py", "main_task_arithmetic.py"),
        # python -c / embedded
        ("-c", "python -m adamerging prepare"),
    ],
)
def test_usage_lines_name_the_command_as_typed(monkeypatch, argv0, expected):
    monkeypatch.setattr("sys.argv", [argv0, "--help"])
    assert command_name("adamerging prepare") == expected
    assert command_name("adamerging prepare", "x") == expected + " x"


def test_the_method_list_is_written_once_and_run_sh_reads_it(capsys):
    from adamerging.__main__ import main
    from adamerging.methods.registry import METHODS, report_rows

    with pytest.raises(SystemExit) as exit_:
        main(["--list"])
    assert exit_.value.code == 0 and capsys.readouterr().out.split() == list(METHODS)
    run_sh = (Path(__file__).resolve().parents[1] / "run.sh").read_text()
    assert "--list" in run_sh and not [m for m in METHODS if m in run_sh]
    # the results table's rows: the registry's order, then the objective variants
    assert [name for name, _ in report_rows()][: len(METHODS)] == list(METHODS)
