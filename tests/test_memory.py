"""Loading holds no random architecture weights, no zero task vectors, and gives the dense TIES result; large CPU tensors on huge pages."""
import os

import torch

from adamerging import hf
from adamerging.merging import is_zero_view, task_vectors
from adamerging.pipeline import parse_config
from adamerging.problem import load_task_vectors
from model_fixtures import MINI_TASKS, mini_argv, write_mini_problem
from test_merging import _dense_ties


def test_loading_assigns_theta0_streams_experts_and_selects_ties_exactly(tmp_path):
    root = write_mini_problem(tmp_path)
    vectors = load_task_vectors(parse_config("ties_merging", mini_argv(root)), "ties")
    # the architecture's visual weights are theta_0's own tensors; the text transformer never existed
    for name, p in vectors.clip.visual.named_parameters():
        assert p.data_ptr() == vectors.theta0["model.visual." + name].data_ptr(), name
    assert all(p.is_meta for p in vectors.clip.transformer.parameters())
    # the text-side leftovers' task vectors (all zero in these files) take no memory
    text_side = [k for k in vectors.entries if not k.startswith("model.visual.")]
    assert text_side and all(is_zero_view(vectors.tau[k]) for k in text_side)
    # same selection as the dense [T, D] implementation on task vectors built from all experts at once
    folder = root / "checkpoints" / "mini"
    theta0 = {k: v.float() for k, v in hf.load_weights(folder / "zeroshot.pt").items()}
    experts = [{k: v.float() for k, v in hf.load_weights(folder / task / "finetuned.pt").items()} for task in MINI_TASKS]
    dense = _dense_ties({k: t.contiguous() for k, t in task_vectors(theta0, experts).items()}, 0.2, "sum")
    assert sorted(vectors.tau) == sorted(dense)
    for key in dense:
        assert torch.equal(vectors.tau[key], dense[key]), key


def test_importing_the_package_defaults_large_cpu_tensors_to_huge_pages_unless_the_user_chose(monkeypatch):
    import importlib

    import adamerging
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    importlib.reload(adamerging)
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    importlib.reload(adamerging)
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
