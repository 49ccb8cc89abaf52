"""Shared test fixtures. The package is imported first, so its torchvision shim precedes every
import of torchvision or open_clip in the tests."""

import pytest
from model_fixtures import write_mini_problem

import adamerging  # noqa: F401


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """A mini problem (3 tasks, 4 test images per class) in the public formats, per test module."""
    return write_mini_problem(tmp_path_factory.mktemp("mini"), n_per_class=4)
