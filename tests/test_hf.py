"""Hugging Face CLIP checkpoints: conversion to/from open_clip, folders, architecture names.

Fixtures (tests/hf_fixtures.py) are random-weight `transformers` models of a small architecture and
their open_clip twins; the full-size checks build the real architectures on the meta device.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import hf_fixtures as F
import pytest
import torch

import adamerging  # noqa: F401  (before torchvision/open_clip/transformers: compat shim)
from adamerging.checkpoints import hf, hf_export, hf_keys
from adamerging.models.clip import create_clip, encoder_state_dict
from adamerging.runtime.errors import CheckpointError

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)  # noqa: E402

TOL = 1e-5


def to_encoder_entries(*args):
    # What the loader calls on every loaded checkpoint (imported late: problem.py pulls in more).
    from adamerging.run.experts import to_encoder_entries as convert

    return convert(*args)


def _same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def hf_model():
    return F.hf_clip(seed=1)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    # Loading must never reach out: any connection attempt fails the test.
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# conversion ---------------------------------------------------------------------------------------


def test_converted_hf_clip_gives_the_same_features_in_open_clip(hf_model):
    oc_sd = hf_keys.hf_to_open_clip(hf_model.state_dict(), hf_model.config.to_dict())
    oc = F.open_clip_model()
    assert list(oc_sd) == list(oc.state_dict())  # canonical order, nothing missing or extra
    oc.load_state_dict(oc_sd, strict=True)
    with torch.no_grad():
        img = F.features(hf_model.get_image_features(pixel_values=F.images()))
        txt = F.features(hf_model.get_text_features(input_ids=F.tokens()))
        torch.testing.assert_close(oc.encode_image(F.images()), img, rtol=0, atol=TOL)
        torch.testing.assert_close(oc.encode_text(F.tokens()), txt, rtol=0, atol=TOL)
    assert torch.equal(oc.logit_scale, hf_model.logit_scale)


def test_open_clip_to_hf_to_open_clip_is_the_identity():
    oc_sd = F.open_clip_model(seed=2).state_dict()
    hf_sd = hf_export.open_clip_to_hf(oc_sd)
    model = CLIPModel(F.clip_config())
    model.load_state_dict(hf_sd, strict=True)  # every HF name is right and nothing is left over
    assert _same(hf_keys.hf_to_open_clip(model.state_dict()), oc_sd)


def test_hf_to_open_clip_to_hf_is_the_identity(hf_model):
    hf_sd = hf_model.state_dict()
    back = hf_export.open_clip_to_hf(hf_keys.hf_to_open_clip(hf_sd))
    assert sorted(back) == sorted(hf_sd)
    assert all(torch.equal(back[k], hf_sd[k]) for k in hf_sd)


def test_qkv_are_stacked_in_q_k_v_order(hf_model):
    sd = hf_model.state_dict()
    oc_sd = hf_keys.hf_to_open_clip(sd)
    w = oc_sd["visual.transformer.resblocks.1.attn.in_proj_weight"]
    d = F.V_WIDTH
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(
            w[i * d : (i + 1) * d], sd[f"vision_model.encoder.layers.1.self_attn.{name}.weight"]
        )
    assert torch.equal(oc_sd["visual.proj"], sd["visual_projection.weight"].t())
    assert torch.equal(oc_sd["text_projection"], sd["text_projection.weight"].t())


def test_legacy_position_ids_are_dropped_and_unknown_keys_refused(hf_model):
    sd = dict(hf_model.state_dict())
    sd["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    sd["text_model.embeddings.position_ids"] = torch.arange(F.CONTEXT)[None]
    assert list(hf_keys.hf_to_open_clip(sd)) == list(F.open_clip_model().state_dict())
    sd["vision_model.encoder.layers.0.mystery.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="mystery"):
        hf_keys.hf_to_open_clip(sd)
    del (
        sd["vision_model.encoder.layers.0.mystery.weight"],
        sd["text_model.encoder.layers.1.self_attn.k_proj.bias"],
    )
    with pytest.raises(CheckpointError, match="k_proj"):
        hf_keys.hf_to_open_clip(sd)


def test_config_is_checked_against_the_weights(hf_model):
    sd = hf_model.state_dict()
    with pytest.raises(CheckpointError, match="2 vision layers, the config says 3"):
        hf_keys.hf_to_open_clip(
            sd, F.clip_config(vision_config={**F.VISION_CONFIG, "num_hidden_layers": 3}).to_dict()
        )
    gelu = F.clip_config(vision_config={**F.VISION_CONFIG, "hidden_act": "gelu"}).to_dict()
    with pytest.raises(ValueError, match="quick_gelu"):
        hf_keys.hf_to_open_clip(sd, gelu)


# vision-only --------------------------------------------------------------------------------------


def test_vision_model_with_projection_gives_the_same_image_features():
    model = F.hf_vision(with_projection=True, seed=3)
    oc_sd = hf_keys.hf_to_open_clip(model.state_dict(), model.config.to_dict())
    oc = F.open_clip_model()
    assert list(oc_sd) == [k for k in oc.state_dict() if k.startswith("visual.")]
    oc.visual.load_state_dict({k[len("visual.") :]: v for k, v in oc_sd.items()}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(
            oc.encode_image(F.images()),
            model(pixel_values=F.images()).image_embeds,
            rtol=0,
            atol=TOL,
        )


@pytest.mark.parametrize("layout", ["transformers5", "transformers4"])
def test_vision_model_without_projection_is_filled_from_the_pretrained(layout):
    model = F.hf_vision(with_projection=False, seed=4)
    sd = dict(model.state_dict())
    # transformers >= 5 saves CLIPVisionModel unprefixed
    assert "embeddings.patch_embedding.weight" in sd
    # FusionBench's files: `vision_model.` prefix, position_ids buffer
    if layout == "transformers4":
        sd = {"vision_model." + k: v for k, v in sd.items()}
        sd["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    partial = hf_keys.hf_to_open_clip(sd, model.config.to_dict())
    assert "visual.proj" not in partial and all(k.startswith("visual.") for k in partial)

    pretrained = encoder_state_dict(F.open_clip_model(seed=5))  # task-vectors layout, model.*
    full = hf.fill_from(partial, pretrained)
    assert list(full) == list(pretrained)
    for k, v in full.items():
        source = partial.get(k[len("model.") :], pretrained[k])
        assert v is source
    assert full["model.visual.proj"] is pretrained["model.visual.proj"]
    assert full["model.text_projection"] is pretrained["model.text_projection"]
    # ... and open_clip keyed references work too
    oc_pre = F.open_clip_model(seed=5).state_dict()
    assert list(hf.fill_from(partial, oc_pre)) == list(oc_pre)
    with pytest.raises(CheckpointError, match="visual.extra"):
        hf.fill_from({**partial, "visual.extra": torch.zeros(1)}, oc_pre)
    # A whole CLIPModel passes through (its text transformer is not part of the encoder layout).
    whole = F.open_clip_model(seed=6).state_dict()
    filled = hf.fill_from(whole, pretrained)
    assert all(filled[k] is whole[k[len("model.") :]] for k in pretrained)


# folders ------------------------------------------------------------------------------------------


def test_saved_hf_folder_loads(tmp_path: Path, hf_model):
    hf_model.save_pretrained(tmp_path / "clip")
    assert (tmp_path / "clip" / "model.safetensors").is_file()
    assert hf.is_hf_checkpoint(tmp_path / "clip")
    loaded = hf.load_hf_checkpoint(tmp_path / "clip")
    assert _same(loaded, hf_keys.hf_to_open_clip(hf_model.state_dict()))
    assert _same(hf.load_weights(tmp_path / "clip"), loaded)
    # What the pipeline does with it: the task-vectors encoder entries.
    reference = encoder_state_dict(F.open_clip_model())
    entries = to_encoder_entries(loaded, reference, tmp_path / "clip")
    assert list(entries) == list(reference)


def test_pytorch_model_bin_loads_through_the_safe_loader(tmp_path: Path, hf_model):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(hf_model.config.to_json_string())
    torch.save(hf_model.state_dict(), folder / "pytorch_model.bin")  # what transformers 4 wrote
    assert hf.is_hf_checkpoint(folder)
    assert _same(hf.load_hf_checkpoint(folder), hf_keys.hf_to_open_clip(hf_model.state_dict()))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pytorch_model_bin_is_refused(tmp_path: Path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    marker = tmp_path / "pwned"
    torch.save({"logit_scale": _Exploit(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused to call"):
        hf.load_hf_checkpoint(folder)
    assert not marker.exists()


def test_not_a_hf_folder(tmp_path: Path):
    assert not hf.is_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert not hf.is_hf_checkpoint(tmp_path)  # no weights
    assert not hf.is_hf_checkpoint(tmp_path / "config.json")
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="sharded"):
        hf.load_hf_checkpoint(tmp_path)


def test_exported_merged_encoder_loads_in_transformers(tmp_path: Path, hf_model):
    oc = F.open_clip_model(seed=6)
    config = hf_model.config.to_dict()
    # A merged image encoder as --save-merged writes it (model.*, no text transformer).
    folder = hf_export.save_hf_checkpoint(tmp_path / "merged", encoder_state_dict(oc), config)
    assert json.loads((folder / "config.json").read_text())["architectures"] == [
        "CLIPVisionModelWithProjection"
    ]
    vision = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            vision(pixel_values=F.images()).image_embeds,
            oc.encode_image(F.images()),
            rtol=0,
            atol=TOL,
        )
    # A whole CLIP exports as a CLIPModel and reads back unchanged.
    folder = hf_export.save_hf_checkpoint(tmp_path / "full", oc.state_dict(), config)
    full = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            F.features(full.get_text_features(input_ids=F.tokens())),
            oc.encode_text(F.tokens()),
            rtol=0,
            atol=TOL,
        )
    assert _same(hf.load_hf_checkpoint(folder), oc.state_dict())


# real architectures -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_real_configs_name_their_open_clip_model(name: str):
    config = CLIPConfig(**F.REAL_CONFIGS[name])
    assert hf_keys.hf_model_name(config.to_dict()) == name
    assert hf_keys.hf_model_name(config) == name  # a PretrainedConfig object works too
    # FusionBench's config.json
    vision_only = CLIPVisionConfig(**F.REAL_CONFIGS[name]["vision_config"]).to_dict()
    assert hf_keys.hf_model_name(vision_only) == name


def test_model_name_uses_transformers_defaults_and_legacy_keys():
    # omitted fields = defaults
    assert hf_keys.hf_model_name({"model_type": "clip_vision_model"}) == "ViT-B-32"
    legacy = {"model_type": "clip", "vision_config": {}, "vision_config_dict": {"patch_size": 16}}
    # *_config_dict overrides, as in transformers
    assert hf_keys.hf_model_name(legacy) == "ViT-B-16"


def test_unknown_architectures_and_activations_are_clear_errors():
    with pytest.raises(ValueError, match="336 px.*ViT-L-14"):
        hf_keys.hf_model_name(
            {
                "model_type": "clip_vision_model",
                "hidden_size": 1024,
                "patch_size": 14,
                "num_hidden_layers": 24,
                "image_size": 336,
            }
        )
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        hf_keys.hf_model_name({"model_type": "clip_vision_model", "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="text config"):
        hf_keys.hf_model_name({"model_type": "clip", "text_config": {"hidden_act": "gelu"}})


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_full_size_keys_and_shapes_map_onto_open_clip(name: str):
    with torch.device("meta"):  # shapes only, no memory
        model = CLIPModel(CLIPConfig(**F.REAL_CONFIGS[name]))
    hf_sd = model.state_dict()
    oc_sd = hf_keys.hf_to_open_clip(hf_sd, model.config.to_dict())
    shapes = lambda sd: [(k, tuple(v.shape)) for k, v in sd.items()]  # noqa: E731
    assert shapes(oc_sd) == shapes(create_clip(name, device="meta").state_dict())
    assert sorted(shapes(hf_export.open_clip_to_hf(oc_sd))) == sorted(shapes(hf_sd))


# configs from open_clip, fixtures -----------------------------------------------------------------


def test_config_from_open_clip_builds_the_same_model_in_transformers():
    oc = F.open_clip_model(seed=7)
    config = hf_export.hf_config_from_open_clip(oc)
    model = CLIPModel(CLIPConfig(**config)).eval()
    model.load_state_dict(hf_export.open_clip_to_hf(oc.state_dict()), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(
            F.features(model.get_image_features(pixel_values=F.images())),
            oc.encode_image(F.images()),
            rtol=0,
            atol=TOL,
        )
        torch.testing.assert_close(
            F.features(model.get_text_features(input_ids=F.tokens())),
            oc.encode_text(F.tokens()),
            rtol=0,
            atol=TOL,
        )


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_config_from_open_clip_matches_the_real_configs(name: str):
    config = hf_export.hf_config_from_open_clip(create_clip(name, device="meta"))
    assert hf_keys.hf_model_name(config) == name
    real = CLIPConfig(**F.REAL_CONFIGS[name]).to_dict()
    for tower in ("vision_config", "text_config"):
        for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers"):
            assert config[tower][key] == real[tower][key], (tower, key)
    assert config["projection_dim"] == real["projection_dim"]


def test_random_hf_checkpoints_load_into_the_encoder_layout(tmp_path: Path):
    from transformers import CLIPVisionModel

    folder, clip, experts = F.write_random_hf_checkpoints(tmp_path, "mini", ["A", "B"])
    reference = encoder_state_dict(create_clip("mini"))
    theta0 = to_encoder_entries(
        hf.load_weights(folder / "zeroshot"), reference, folder / "zeroshot"
    )
    assert _same(theta0, {k: v.float() for k, v in encoder_state_dict(clip).items()})
    for task, expert in experts.items():
        path = folder / task / "finetuned"
        assert json.loads((path / "config.json").read_text())["architectures"] == [
            "CLIPVisionModel"
        ]
        # transformers reads it as FusionBench's
        _, info = CLIPVisionModel.from_pretrained(path, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        partial = hf.load_weights(path)
        assert "visual.proj" not in partial
        entries = to_encoder_entries(hf.fill_from(partial, theta0), reference, path)
        assert _same(entries, {k: v.float() for k, v in encoder_state_dict(expert).items()})


# ---------------------------------------------------------------------------------------------
# The scripts on Hugging Face checkpoints (FusionBench's layout), and on a user's own tasks.

HF_TASKS = {"SVHN": 10, "MNIST": 10}


def run(method, argv):
    from adamerging.commands.pipeline import parse_config
    from adamerging.commands.pipeline import run as run_config

    return run_config(method, parse_config(method, argv))


@pytest.fixture(scope="module")
def hf_vit_b32(tmp_path_factory):
    from fake_data import write_fake_dataset
    from hf_fixtures import write_random_hf_checkpoints

    root = tmp_path_factory.mktemp("hf")
    write_random_hf_checkpoints(root / "checkpoints" / "hf", "ViT-B-32", list(HF_TASKS), scale=0.01)
    for task in HF_TASKS:
        write_fake_dataset(task, root / "data", n_per_class=1, image_size=16)
    return root


@pytest.mark.parametrize(
    "method",
    [
        "task_arithmetic",
        "ties_merging",
        "task_wise_adamerging",
        "task_wise_adamergingpp",
        "layer_wise_adamerging",
        "layer_wise_adamergingpp",
    ],
)
def test_all_six_scripts_run_on_hf_vit_b32(hf_vit_b32, method):

    root = hf_vit_b32
    result = run(
        method,
        [
            "--model",
            "ViT-B-32",
            "--checkpoints",
            str(root / "checkpoints" / "hf"),
            "--checkpoint-format",
            "hf",
            "--data-location",
            str(root / "data"),
            "--results-dir",
            str(root / "results"),
            "--tasks",
            "SVHN,MNIST",
            "--steps",
            "1",
            "--batch-size-adapt",
            "2",
            "--no-progress",
            "--overwrite",
        ],
    )
    assert set(result["accuracy"]) == set(HF_TASKS)
    rows = 158 if "layer_wise" in method else 1  # HF rows map to the same 158 canonical entries
    assert len(result["coefficients"]["values"]) == rows


def test_user_tasks_and_experts_by_path(tmp_path):
    import numpy as np
    from model_fixtures import write_random_checkpoints
    from PIL import Image

    folder = write_random_checkpoints(
        tmp_path / "ckpt",
        "mini",
        {"Shapes": 2, "Colors": 3},
        heads={"Shapes": False, "Colors": False},
    )
    rng = np.random.default_rng(0)
    for task, classes in {
        "Shapes": ["circle", "square"],
        "Colors": ["red", "green", "blue"],
    }.items():
        for c in classes:
            (tmp_path / task / "test" / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                    tmp_path / task / "test" / c / f"{i}.png"
                )
    (tmp_path / "Colors" / "templates.txt").write_text("a {c} thing.\n")
    result = run(
        "task_arithmetic",
        [
            "--model",
            "mini",
            "--checkpoints",
            str(tmp_path / "ckpt"),
            "--results-dir",
            str(tmp_path / "res"),
            "--task",
            f"Shapes={tmp_path / 'Shapes'}",
            "--task",
            f"Colors={tmp_path / 'Colors'}",
            "--finetuned",
            f"Shapes={folder / 'Shapes' / 'finetuned.pt'}",
            "--no-progress",
        ],
    )
    assert result["tasks"] == ["Shapes", "Colors"]
    with pytest.raises(ValueError, match="NAME=VALUE"):
        run("task_arithmetic", ["--model", "mini", "--task", "Shapes"])


def test_save_format_hf_writes_a_folder_transformers_loads_with_the_same_image_features(tmp_path):
    from model_fixtures import mini_argv, write_mini_problem
    from transformers import CLIPVisionModel

    from adamerging.commands.pipeline import parse_config
    from adamerging.merging.encoder import MergedEncoder
    from adamerging.run.problem import load_problem

    root = write_mini_problem(tmp_path, n_per_class=1)
    out = tmp_path / "merged_hf"
    argv = mini_argv(root, "--save-merged", str(out), "--save-format", "hf")
    result = run("task_arithmetic", argv)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    model = CLIPVisionModelWithProjection.from_pretrained(out, local_files_only=True).eval()
    # the tower alone loads too
    assert CLIPVisionModel.from_pretrained(out, local_files_only=True) is not None
    # Our encoder at the run's lambdas, on the run's normalised test images.
    problem = load_problem(parse_config("task_arithmetic", argv))
    merged = MergedEncoder(problem.clip.visual, problem.theta0, problem.tau, problem.entries, "cpu")
    lambdas = torch.tensor([row[1:] for row in result["coefficients"]["values"]])
    x = problem.normalize(problem.data[0].images[:4])
    with torch.no_grad():
        ours = merged.encoder(lambdas)(x)
        theirs = model(pixel_values=x).image_embeds
    torch.testing.assert_close(theirs, ours, rtol=0, atol=TOL)


def _clip_with_other_text_tower(clip: torch.nn.Module) -> torch.nn.Module:
    """A CLIP with `clip`'s image tower (mini) and a narrower, shallower text tower."""
    import open_clip

    other = open_clip.CLIP(
        embed_dim=128,
        vision_cfg=dict(image_size=32, layers=4, width=128, patch_size=8),
        text_cfg=dict(context_length=16, vocab_size=49408, width=64, heads=2, layers=1),
        quick_gelu=True,
    )
    other.visual.load_state_dict(clip.visual.state_dict())
    return other


def test_hf_clipmodel_with_another_text_tower_merges_when_heads_are_given(tmp_path, caplog):
    from fake_data import write_fake_dataset

    from adamerging.models.task_vectors_format import save_classification_head

    tasks = {"MNIST": 10, "SVHN": 10}
    folder, clip, _ = F.write_random_hf_checkpoints(tmp_path / "ckpt", "mini", list(tasks))
    for task, n in tasks.items():
        write_fake_dataset(task, tmp_path / "data", n_per_class=1, image_size=8)
        save_classification_head(
            torch.nn.functional.normalize(torch.randn(n, 128), dim=1) * 100,
            folder / f"head_{task}.pt",
        )
    argv = [
        "--model",
        "mini",
        "--checkpoints",
        str(tmp_path / "ckpt"),
        "--checkpoint-format",
        "hf",
        "--data-location",
        str(tmp_path / "data"),
        "--tasks",
        "MNIST,SVHN",
        "--no-progress",
        "--overwrite",
    ]
    same = run("task_arithmetic", [*argv, "--results-dir", str(tmp_path / "same")])
    hf_export.save_hf_checkpoint(
        folder / "zeroshot",
        _clip_with_other_text_tower(clip).state_dict(),
        hf_export.hf_config_from_open_clip(_clip_with_other_text_tower(clip)),
    )
    with caplog.at_level("WARNING", logger="adamerging.hf"):
        other = run("task_arithmetic", [*argv, "--results-dir", str(tmp_path / "other")])
    assert other["accuracy"] == same["accuracy"]  # the image tower is all that is merged
    notes = [r.getMessage() for r in caplog.records if "text tower" in r.getMessage()]
    assert (
        notes
        and "width 64, 1 layers" in notes[0]
        and "width 128, 2 layers" in notes[0]
        and "zeroshot" in notes[0]
    )
    # without the heads, it says up front what is needed instead of a shape error
    (folder / "head_SVHN.pt").unlink()
    with pytest.raises(CheckpointError) as e:
        run("task_arithmetic", [*argv, "--results-dir", str(tmp_path / "other")])
    message = str(e.value)
    assert (
        "\n" not in message
        and "text tower" in message
        and "['SVHN']" in message
        and "head_<Task>.pt" in message
    )


def _hf_argv(root, checkpoints, *extra):
    return [
        "--model",
        "ViT-B-32",
        "--checkpoints",
        str(checkpoints),
        "--checkpoint-format",
        "hf",
        "--data-location",
        str(root / "data"),
        "--results-dir",
        str(root / "refused"),
        "--tasks",
        "SVHN,MNIST",
        "--no-progress",
        *extra,
    ]


def _refused_from_the_command_line(argv, capsys) -> str:
    import re

    from adamerging.commands.pipeline import main

    with pytest.raises(SystemExit) as exit_:
        main("task_arithmetic", argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and re.fullmatch(r"error: [^\n]+", err), err
    return err


def test_hf_folders_that_do_not_belong_to_the_run_are_refused_with_one_line(
    hf_vit_b32, tmp_path, capsys
):
    root = hf_vit_b32
    folder = root / "checkpoints" / "hf"
    # the same Hugging Face folder for two tasks
    err = _refused_from_the_command_line(
        _hf_argv(
            root, folder, "--finetuned", f"MNIST={folder / 'ViT-B-32' / 'SVHN' / 'finetuned'}"
        ),
        capsys,
    )
    assert "SVHN and MNIST load the same expert" in err and "--allow-duplicate-experts" in err
    # a CLIPVisionModel of another initialisation (not fine-tuned from this zeroshot/)
    torch.manual_seed(7)
    other = create_clip("ViT-B-32")
    config = hf_export.hf_config_from_open_clip(other)
    visual = {k: v for k, v in other.state_dict().items() if k.startswith("visual.")}
    hf_export.save_hf_checkpoint(tmp_path / "foreign", visual, config, vision_projection=False)
    err = _refused_from_the_command_line(
        _hf_argv(root, folder, "--finetuned", f"MNIST={tmp_path / 'foreign'}"), capsys
    )
    assert (
        err.startswith("error: MNIST: ||tau|| / ||theta_0|| = 1.")
        and "foreign was not fine-tuned from" in err
    )
    assert not (root / "refused").exists()
    # a task-vectors head of another architecture's width beside the Hugging Face folders
    # (ViT-L/14's 768 vs 512)
    from adamerging.models.task_vectors_format import save_classification_head

    mixed = tmp_path / "mixed" / "ViT-B-32"
    for name in ("zeroshot", "SVHN", "MNIST"):
        mixed.mkdir(parents=True, exist_ok=True)
        (mixed / name).symlink_to(folder / "ViT-B-32" / name)
    save_classification_head(torch.randn(10, 768), mixed / "head_SVHN.pt")
    err = _refused_from_the_command_line(_hf_argv(root, tmp_path / "mixed"), capsys)
    assert (
        err
        == f"error: {mixed / 'head_SVHN.pt'}: the head is 768 wide, the ViT-B-32 image encoder's"
        " features are 512: a head of another architecture; rebuild the heads from the text"
        " tower with --rebuild-heads (full CLIP weights: --clip-weights)"
    )
    # the same folders with --rebuild-heads: the head file is ignored, every head comes from
    # zeroshot/'s text tower
    result = run("task_arithmetic", _hf_argv(root, tmp_path / "mixed", "--rebuild-heads"))
    assert set(result["accuracy"]) == {"SVHN", "MNIST"}
    heads = result["provenance"]["files"]["heads"]
    assert all(
        h["built_from_text_tower"]["format"] == "Hugging Face folder" for h in heads.values()
    )
    assert result["provenance"]["files"]["finetuned"]["SVHN"]["format"] == "Hugging Face folder"
