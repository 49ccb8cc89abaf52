"""Architecture facts the real checkpoints depend on."""

import json
import subprocess
import sys
from importlib import resources

import open_clip
import pytest
import torch

from adamerging._torchvision_compat import ensure_torchvision_importable
from adamerging.models.clip import create_clip, encoder_state_dict, load_encoder_weights


@pytest.mark.parametrize("model", ["ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_canonical_entry_order_matches_the_checkpoints(model):
    canonical = json.loads(
        resources.files("adamerging.data").joinpath("canonical_entry_order.json").read_text()
    )[model]
    clip = create_clip(model, device="meta")  # shapes only, no memory
    ours = [(k, list(v.shape)) for k, v in encoder_state_dict(clip).items()]
    assert ours == [(e["key"], e["shape"]) for e in canonical]
    assert len(ours) == (302 if model == "ViT-L-14" else 158)


def test_activation_is_quick_gelu():
    # With plain GELU the OpenAI weights load without error and silently lose accuracy.
    clip = create_clip("ViT-B-32", device="meta")
    acts = {type(block.mlp.gelu).__name__ for block in clip.visual.transformer.resblocks}
    assert acts == {"QuickGELU"}
    assert (
        type(create_clip("mini").visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    )


def test_load_encoder_weights_names_missing_and_mismatched_keys():
    clip = create_clip("mini")
    sd = {k: v.clone() for k, v in encoder_state_dict(clip).items()}
    del sd["model.visual.proj"]
    with pytest.raises(KeyError, match=r"model\.visual\.proj"):
        load_encoder_weights(clip, sd, "x.pt")
    sd["model.visual.proj"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"model\.visual\.proj.*\(3, 3\)"):
        load_encoder_weights(clip, sd, "x.pt")


def test_torchvision_shim_is_idempotent_and_open_clip_imports_in_a_fresh_process():
    ensure_torchvision_importable()
    ensure_torchvision_importable()
    code = "import adamerging, torchvision, open_clip; print(open_clip.__version__)"
    src = str(resources.files("adamerging").parent)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": src, "PATH": ""},
    )
    assert out.returncode == 0, out.stderr
    assert open_clip.__version__ in out.stdout


def test_the_shim_leaves_a_working_torchvision_alone(tmp_path):
    """A torchvision whose own extension defines torchvision::nms on import (torchvision 0.29's
    `_C_stable.so`, stood in for by a package that defines the schema itself) must import after
    `adamerging`: defining the schema first would collide with it (a process abort with the real
    extension)."""
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import torch\n_LIB = torch.library.Library('torchvision', 'DEF')\n_LIB.define('nms(Tensor"
        " dets, Tensor scores, float iou_threshold) -> Tensor')\n__version__ = 'fake'\n"
    )
    src = str(resources.files("adamerging").parent)
    code = (
        "import adamerging, torchvision; print(torchvision.__version__, torch.ops.torchvision.nms)"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import torch; " + code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{tmp_path}:{src}", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("fake")


def test_the_openai_normalisation_constants_are_open_clips():
    from adamerging.models.clip import OPENAI_MEAN, OPENAI_STD

    assert (OPENAI_MEAN, OPENAI_STD) == (
        open_clip.OPENAI_DATASET_MEAN,
        open_clip.OPENAI_DATASET_STD,
    )
