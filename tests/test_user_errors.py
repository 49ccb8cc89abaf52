"""Mistakes a new user makes get one actionable line, before any work is done."""

import os
import stat

import pytest
import torch
from model_fixtures import mini_argv, write_mini_problem

from adamerging.commands import pipeline
from adamerging.commands.pipeline import parse_config
from adamerging.merging.tables import published_table
from adamerging.runtime.files import atomic_write


def _run(argv: list[str]) -> dict:
    return pipeline.run("task_arithmetic", parse_config("task_arithmetic", argv))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_mini_problem(tmp_path_factory.mktemp("errors"), n_per_class=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_and_an_unknown_device_are_one_line_errors(root):
    with pytest.raises(
        ValueError, match=r"^--device cuda: this torch .* sees no CUDA device; use --device cpu$"
    ):
        _run(mini_argv(root, "--device", "cuda"))
    with pytest.raises(ValueError, match=r"^--device 'gpu' is not a torch device"):
        _run(mini_argv(root, "--device", "gpu"))


def test_repeated_and_unknown_task_names_are_refused(root):
    with pytest.raises(ValueError, match="--tasks lists MNIST more than once"):
        _run(mini_argv(root, tasks="MNIST,mnist"))
    with pytest.raises(
        ValueError,
        match=r"'Foo' is not one of the built-in tasks .* --task Foo=DIR and --finetuned Foo=PATH",
    ):
        _run(mini_argv(root, tasks="MNIST,Foo"))


def test_a_missing_data_folder_is_reported_and_not_created(root, tmp_path):
    from adamerging.runtime.errors import DatasetError

    missing = tmp_path / "nodata"
    with pytest.raises(DatasetError, match="nodata"):
        _run(mini_argv(root, "--data-location", str(missing)))
    assert not missing.exists()


def test_abbreviated_flags_are_not_taken_for_others():
    with pytest.raises(SystemExit):
        parse_config("layer_wise_adamerging", ["--step", "5"])
    assert parse_config("layer_wise_adamerging", ["--steps", "5"]).steps == 5


def test_published_tables_name_the_models_they_exist_for():
    with pytest.raises(
        ValueError,
        match=(
            r"no published coefficients for lw_adamerging on mini: .* for ViT-B-16, ViT-B-32,"
            r" ViT-L-14 only"
        ),
    ):
        published_table("lw_adamerging", "mini")


def test_written_files_get_the_mode_open_would_give(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "r.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


def test_a_hugging_face_export_to_a_file_name_is_refused_before_the_run(root, tmp_path):
    with pytest.raises(ValueError, match=r"--save-format hf writes a folder .* names a file"):
        _run(
            mini_argv(root, "--save-merged", str(tmp_path / "m.safetensors"), "--save-format", "hf")
        )
    assert not (tmp_path / "m.safetensors").exists()
