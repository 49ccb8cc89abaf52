"""Loading checkpoints without running code from them."""

import os
import sys
from pathlib import Path

import open_clip
import pytest
import torch

import adamerging  # noqa: F401  (torchvision shim)
from adamerging.checkpoints.hf_export import hf_config_from_open_clip
from adamerging.checkpoints.loading import load_checkpoint, save_state_dict
from adamerging.models.clip import create_clip, encoder_state_dict
from adamerging.models.task_vectors_format import save_classification_head, save_image_encoder
from adamerging.runtime.errors import CheckpointError

LEGACY = Path(__file__).parent / "legacy"


def _legacy_modeling():
    """Import the test-only `src.modeling` (only to *write* fixtures) and forget it afterwards."""
    sys.path.insert(0, str(LEGACY))
    try:
        import src.modeling as modeling

        return modeling
    finally:
        sys.path.remove(str(LEGACY))


def _forget_legacy():
    for name in ("src", "src.modeling"):
        sys.modules.pop(name, None)


def test_loads_a_task_vectors_pickle_without_importing_its_classes(tmp_path):
    modeling = _legacy_modeling()
    clip = create_clip("mini")
    # real open_clip transforms, as the public files carry: their enum members are pickled as calls
    val_preprocess = open_clip.image_transform(32, is_train=False)
    expected = encoder_state_dict(clip)
    expected = {k: v.detach().clone() for k, v in expected.items()}
    encoder = modeling.ImageEncoder(
        clip, val_preprocess=val_preprocess, train_preprocess=val_preprocess
    )
    head = modeling.ClassificationHead(True, torch.randn(5, 128))
    torch.save(encoder, tmp_path / "zeroshot.pt")
    torch.save(head, tmp_path / "head_MNIST.pt")
    _forget_legacy()

    loaded = load_checkpoint(tmp_path / "zeroshot.pt")
    assert "src.modeling" not in sys.modules  # the original class was never imported
    assert loaded.kind == "module:src.modeling.ImageEncoder"
    assert list(loaded.state_dict) == list(expected)  # canonical order, text transformer absent
    for k, v in expected.items():
        assert torch.equal(loaded.state_dict[k], v), k
    h = load_checkpoint(tmp_path / "head_MNIST.pt")
    assert h.attributes["normalize"] is True
    assert torch.equal(h.state_dict["weight"], head.weight.detach())
    assert torch.equal(h.state_dict["bias"], torch.zeros(5))


def test_package_writers_roundtrip(tmp_path):
    clip = create_clip("mini")
    save_image_encoder(clip, tmp_path / "enc.pt")
    save_classification_head(torch.ones(3, 128), tmp_path / "head.pt")
    ref = encoder_state_dict(clip)
    got = load_checkpoint(tmp_path / "enc.pt").state_dict
    assert list(got) == list(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert torch.equal(
        load_checkpoint(tmp_path / "head.pt").state_dict["weight"], torch.ones(3, 128)
    )
    assert "src" not in sys.modules


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_plain_state_dicts_load_and_are_readable_without_this_repo(tmp_path, suffix):
    sd = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    save_state_dict(sd, tmp_path / f"sd{suffix}")
    got = load_checkpoint(tmp_path / f"sd{suffix}").state_dict
    assert torch.equal(got["a"], sd["a"]) and torch.equal(got["b"], sd["b"])
    if suffix == ".pt":
        assert torch.equal(torch.load(tmp_path / "sd.pt", weights_only=True)["a"], sd["a"])
    else:
        from safetensors.torch import load_file

        assert torch.equal(load_file(str(tmp_path / "sd.safetensors"))["a"], sd["a"])


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_a_command_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _RunsACommand(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*refused to call (posix|os)\.system"):
        load_checkpoint(path)
    assert not marker.exists()
    # the same file would run the command with plain pickle semantics: the test is meaningful
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_garbage_truncated_and_nan_files_give_one_line_errors(tmp_path):
    (tmp_path / "text.pt").write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"text\.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    save_state_dict({"w": torch.randn(100)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    save_state_dict({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan\.pt: entry 'w' contains NaN"):
        load_checkpoint(tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_unknown_module_is_never_imported(tmp_path):
    # GLOBAL of a module that does not exist, then a call to it: refused before any import is tried
    payload = b"\x80\x02cno_such_module_xyz\nboom\nq\x00)R."
    path = tmp_path / "unknown.pt"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "unknown.pt" in _one_line(e) and "no_such_module_xyz.boom" in str(e.value)
    assert "no_such_module_xyz" not in sys.modules
    # an instance of an unknown class (no call) is inert, but it is not a checkpoint
    torch_save_like = b"\x80\x02cno_such_module_xyz\nThing\nq\x00)\x81q\x01}q\x02b."
    (tmp_path / "thing.pt").write_bytes(torch_save_like)
    with pytest.raises(CheckpointError, match=r"thing\.pt: .*(holds a|not a readable)"):
        load_checkpoint(tmp_path / "thing.pt")


def test_zip_with_a_bad_entry_is_a_clear_error(tmp_path):
    import zipfile

    save_state_dict({"w": torch.randn(64)}, tmp_path / "ok.pt")
    with (
        zipfile.ZipFile(tmp_path / "ok.pt") as src,
        zipfile.ZipFile(tmp_path / "bad.pt", "w") as dst,
    ):
        for item in src.infolist():
            data = src.read(item.filename)
            if "/data/" in item.filename and not item.filename.endswith(".pkl"):
                data = data[:10]  # a storage entry cut short
            dst.writestr(item, data)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "bad.pt")
    assert "bad.pt" in _one_line(e)


def test_a_list_of_tensors_is_not_a_checkpoint(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: holds a list"):
        load_checkpoint(tmp_path / "list.pt")


# ----- every container torch.load reads (issue 13, part 1) ----------------------------------------


def _save_legacy_fixtures(folder: Path, protocols=(2, 3, 4, 5)) -> dict:
    """Encoder and head pickled from the test-only `src.modeling`, in the zip container and in the
    legacy one (what torch < 1.6 wrote), with every pickle protocol torch.save accepts."""
    modeling = _legacy_modeling()
    torch.manual_seed(0)
    encoder = modeling.ImageEncoder(
        create_clip("mini"), val_preprocess=open_clip.image_transform(32, is_train=False)
    )
    head = modeling.ClassificationHead(True, torch.randn(5, 128))
    files = {}
    for container in ("zip", "legacy"):
        for proto in protocols:
            for name, obj in (("enc", encoder), ("head", head)):
                path = folder / f"{name}_{container}_{proto}.pt"
                torch.save(
                    obj,
                    path,
                    pickle_protocol=proto,
                    _use_new_zipfile_serialization=container == "zip",
                )
                files[name, container, proto] = path
    _forget_legacy()
    return files


@pytest.mark.parametrize("proto", [2, 3, 4, 5])
def test_legacy_container_loads_like_the_zip_one_without_importing_classes(tmp_path, proto):
    files = _save_legacy_fixtures(tmp_path, protocols=(proto,))
    for name in ("enc", "head"):
        zipped = load_checkpoint(files[name, "zip", proto])
        legacy = load_checkpoint(files[name, "legacy", proto])
        assert legacy.kind == zipped.kind and legacy.attributes == zipped.attributes
        assert list(legacy.state_dict) == list(zipped.state_dict)
        for k, v in zipped.state_dict.items():
            assert legacy.state_dict[k].dtype == v.dtype and torch.equal(legacy.state_dict[k], v), (
                name,
                k,
            )
    assert "src.modeling" not in sys.modules


def _legacy_container(obj, persistent_id=lambda obj: None) -> bytes:
    """Bytes of torch's legacy container (magic number, protocol version, sys info, the object's
    pickle, storage keys) written by hand, so the pickle can hold what torch.save never writes."""
    import io
    import pickle

    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    out = io.BytesIO()
    for header in (
        MAGIC_NUMBER,
        PROTOCOL_VERSION,
        {"protocol_version": PROTOCOL_VERSION, "little_endian": True},
    ):
        pickle.dump(header, out, protocol=2)
    pickler = pickle.Pickler(out, protocol=2)
    pickler.persistent_id = persistent_id
    pickler.dump(obj)
    pickle.dump([], out, protocol=2)
    return out.getvalue()


def _tar_container(obj, path: Path) -> None:
    """torch's oldest container (torch <= 0.3; `torch.load` still reads it): a tar of `storages`,
    `tensors` and `pickle`, written by hand as torch's `_legacy_load` reads it."""
    import io
    import pickle
    import struct
    import tarfile

    tensors, classes = {}, set()

    def persistent_id(o):
        if isinstance(o, type) and issubclass(o, torch.nn.Module) and o not in classes:
            # the id holds the class itself, which must then pickle as a plain global
            classes.add(o)
            return (o, "modeling.py", "class source")
        if isinstance(o, torch.Tensor):
            tensors[len(tensors)] = o.detach().contiguous()
            return str(len(tensors) - 1)
        return None

    body, storages, views = io.BytesIO(), io.BytesIO(), io.BytesIO()
    pickler = pickle.Pickler(body, protocol=2)
    pickler.persistent_id = persistent_id
    pickler.dump(obj)
    pickle.dump(len(tensors), storages, protocol=2)
    pickle.dump(len(tensors), views, protocol=2)
    for key, t in tensors.items():
        storage_type = {torch.float32: torch.FloatStorage, torch.int64: torch.LongStorage}[t.dtype]
        # storage keys apart from tensor keys
        pickle.dump((1000 + key, "cpu", storage_type), storages, protocol=2)
        storages.write(struct.pack("<q", t.numel()) + t.numpy().tobytes())
        pickle.dump((key, 1000 + key, None), views, protocol=2)
        views.write(
            struct.pack("<i", t.dim())
            + b"\0" * 4
            + struct.pack(f"<{t.dim()}q", *t.shape)
            + struct.pack(f"<{t.dim()}q", *t.stride())
            + struct.pack("<q", 0)
        )
    pickle.dump([], storages, protocol=2)
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("storages", storages), ("tensors", views), ("pickle", body)):
            info = tarfile.TarInfo(name)
            info.size = len(data.getvalue())
            tar.addfile(info, io.BytesIO(data.getvalue()))


def test_oldest_tar_container_loads_like_the_zip_one(tmp_path):
    modeling = _legacy_modeling()
    torch.manual_seed(0)
    encoder = modeling.ImageEncoder(create_clip("mini"))
    head = modeling.ClassificationHead(True, torch.randn(5, 128))
    for name, obj in (("enc", encoder), ("head", head)):
        torch.save(obj, tmp_path / f"{name}_zip.pt")
        _tar_container(obj, tmp_path / f"{name}_tar.pt")
    _forget_legacy()
    for name in ("enc", "head"):
        zipped, tarred = (
            load_checkpoint(tmp_path / f"{name}_zip.pt"),
            load_checkpoint(tmp_path / f"{name}_tar.pt"),
        )
        assert tarred.kind == zipped.kind and tarred.attributes == zipped.attributes
        assert list(tarred.state_dict) == list(zipped.state_dict)
        assert all(torch.equal(tarred.state_dict[k], v) for k, v in zipped.state_dict.items()), name
    assert "src.modeling" not in sys.modules


class _ContainerClass:
    """Pickled by reference through the legacy container's ("module", class, file, source) id."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_ContainerClass, (self.marker,))


def test_hostile_legacy_container_files_are_refused_and_run_nothing(tmp_path):
    marker = tmp_path / "pwned"
    # 1. torch.save's own legacy container around a pickle that calls os.system
    torch.save(
        {"weight": torch.zeros(2), "payload": _RunsACommand(marker)},
        tmp_path / "evil_legacy.pt",
        _use_new_zipfile_serialization=False,
    )
    with pytest.raises(
        CheckpointError, match=r"evil_legacy\.pt.*refused to call (posix|os)\.system"
    ):
        load_checkpoint(tmp_path / "evil_legacy.pt")

    # 2. the container's module id naming os.system as the "class", which the pickle then calls
    def module_id(obj):
        is_class = obj is _ContainerClass
        return ("module", os.system, "x.py", "source") if is_class else None

    (tmp_path / "evil_module_id.pt").write_bytes(
        _legacy_container(_ContainerClass(f"touch {marker}"), module_id)
    )
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "evil_module_id.pt")
    assert "evil_module_id.pt" in _one_line(e) and "refused to call" in str(e.value)
    # 3. a call to a module that does not exist, inside the legacy container
    unknown_call = b"\x80\x02cno_such_module_xyz\nboom\nq\x00)R."
    (tmp_path / "unknown_legacy.pt").write_bytes(
        _legacy_container(None).replace(b"\x80\x02N.", unknown_call, 1)
    )
    with pytest.raises(CheckpointError, match=r"unknown_legacy\.pt.*no_such_module_xyz\.boom"):
        load_checkpoint(tmp_path / "unknown_legacy.pt")
    # 4. the tar container around a pickle that calls os.system
    _tar_container(
        {"weight": torch.zeros(2), "payload": _RunsACommand(marker)}, tmp_path / "evil_tar.pt"
    )
    with pytest.raises(CheckpointError, match=r"evil_tar\.pt.*refused to call (posix|os)\.system"):
        load_checkpoint(tmp_path / "evil_tar.pt")
    assert not marker.exists() and "no_such_module_xyz" not in sys.modules
    # the crafted files are live: plain pickle semantics would run the command
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.load(tmp_path / "evil_module_id.pt", weights_only=False)
    assert marker.exists()


def test_an_unreadable_file_says_which_format_it_looked_like(tmp_path):
    files = _save_legacy_fixtures(tmp_path, protocols=(2,))
    for container, looks in (("zip", "zip container"), ("legacy", "legacy container")):
        data = files["head", container, 2].read_bytes()
        cut = tmp_path / f"cut_{container}.pt"
        cut.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(cut)
        assert f"cut_{container}.pt" in _one_line(e) and looks in str(e.value), str(e.value)
    cases = {
        "lfs.pt": (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
            "Git LFS pointer",
        ),
        "page.pt": (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML"),
        "empty.pt": (b"", "empty file"),
    }
    for name, (data, looks) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path / name)
        assert name in _one_line(e) and looks in str(e.value), str(e.value)
    save_state_dict({"w": torch.zeros(3)}, tmp_path / "weights.safetensors")
    (tmp_path / "weights.safetensors").rename(tmp_path / "weights.pt")
    with pytest.raises(
        CheckpointError,
        match=r"weights\.pt: .*looks like a safetensors file \(give it the \.safetensors suffix\)",
    ):
        load_checkpoint(tmp_path / "weights.pt")
    (tmp_path / "pointer.safetensors").write_bytes(cases["lfs.pt"][0])
    with pytest.raises(
        CheckpointError,
        match=r"pointer\.safetensors: not a readable safetensors file; it looks like a Git LFS",
    ):
        load_checkpoint(tmp_path / "pointer.safetensors")


# ----- wrappers open_clip's own loader removes ----------------------------------------------------


def test_ddp_prefix_and_open_clip_training_checkpoint_are_unwrapped_with_a_log_line(
    tmp_path, caplog
):
    clip = create_clip("mini")
    sd = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    ddp = {"module." + k: v for k, v in sd.items()}
    torch.save(ddp, tmp_path / "ddp.pt")
    torch.save(
        {
            "epoch": 10,
            "name": "run",
            "state_dict": ddp,
            "optimizer": {"state": {}, "param_groups": []},
        },
        tmp_path / "epoch_10.pt",
    )
    for name, notes in (
        ("ddp.pt", ["DistributedDataParallel"]),
        ("epoch_10.pt", ["training checkpoint", "DistributedDataParallel"]),
    ):
        caplog.clear()
        with caplog.at_level("WARNING", logger="adamerging.checkpoints"):
            got = load_checkpoint(tmp_path / name).state_dict
        assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
        for note in notes:
            assert any(name in r.getMessage() and note in r.getMessage() for r in caplog.records), (
                name,
                note,
            )
    # a file where only some entries carry the prefix is left as it is (and then fails the key
    # check)
    torch.save({"module.a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "mixed.pt")
    assert list(load_checkpoint(tmp_path / "mixed.pt").state_dict) == ["module.a", "b"]


# ----- the files this repo writes load where the public ones load ---------------------------------

_PLAIN_LOAD = r"""
import importlib.abc, importlib.util, json, sys

class _NoAdamerging(importlib.abc.MetaPathFinder):   # as where this package is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "adamerging":
            raise ImportError(f"No module named {name!r} (blocked: must load without it)")

sys.meta_path.insert(0, _NoAdamerging())
legacy, shim, expected_file, *paths = sys.argv[1:]
sys.path.insert(0, legacy)  # the task-vectors `src.modeling` (tests/legacy stands in for it)
# this machine only: a CUDA torchvision on CPU torch needs the op schemas before open_clip
spec = importlib.util.spec_from_file_location("torchvision_shim", shim)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
import torch, open_clip

expected = torch.load(expected_file, weights_only=True)
out = {}
for path in paths:
    # plain unpickling: every class is imported
    obj = torch.load(path, map_location="cpu", weights_only=False)
    classes = sorted({f"{type(m).__module__}.{type(m).__name__}" for m in obj.modules()})
    same = None
    # an ImageEncoder: its forward is model.encode_image, with open_clip's modules
    if hasattr(obj, "model") and path in expected["features"]:
        with torch.no_grad():
            same = bool(torch.equal(obj(expected["images"]), expected["features"][path]))
    out[path] = {"classes": classes, "same_features": same}
assert not [m for m in sys.modules if m.split(".")[0] == "adamerging"]
print(json.dumps(out))
"""


def load_without_this_package(paths, features=None, images=None) -> dict:
    """Unpickle `paths` with a plain `torch.load(weights_only=False)` in a fresh interpreter that
    has only open_clip and tests/legacy's `src.modeling` (importing `adamerging` fails there).
    Returns per path the classes of its modules and, for encoders in `features` ({path: [N, d]} of
    `images`), whether its forward gives exactly those features."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        expected = Path(tmp) / "expected.pt"
        torch.save(
            {
                "images": images if images is not None else torch.zeros(1),
                "features": {str(k): v for k, v in (features or {}).items()},
            },
            expected,
        )
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        shim = Path(adamerging.__file__).with_name("_torchvision_compat.py")
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _PLAIN_LOAD,
                str(LEGACY),
                str(shim),
                str(expected),
                *map(str, paths),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_written_pickles_load_with_plain_torch_load_and_open_clip_only(tmp_path):
    from model_fixtures import mini_argv, write_mini_problem

    from adamerging.commands.pipeline import parse_config, run

    clip = create_clip("mini")
    # the lean activation is in use here
    assert any(type(m).__module__ == "adamerging.models.clip" for m in clip.modules())
    save_image_encoder(clip, tmp_path / "zeroshot.pt")
    save_classification_head(torch.randn(3, 128), tmp_path / "head.pt")
    # the caller's model is left as it was
    assert any(type(m).__module__ == "adamerging.models.clip" for m in clip.modules())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = clip.encode_image(images)
    # the built-head cache, as a run writes it (the fixture has no head file for EuroSAT)
    root = write_mini_problem(tmp_path / "run", n_per_class=1)
    run("task_arithmetic", parse_config("task_arithmetic", mini_argv(root, tasks="EuroSAT")))
    built = list((root / "data" / ".cache" / "heads").rglob("*.pt"))
    assert len(built) == 1
    got = load_without_this_package(
        [tmp_path / "zeroshot.pt", tmp_path / "head.pt", *built],
        {tmp_path / "zeroshot.pt": features},
        images,
    )
    encoder = got[str(tmp_path / "zeroshot.pt")]
    assert (
        encoder["same_features"] is True and "open_clip.transformer.QuickGELU" in encoder["classes"]
    )
    assert "src.modeling.ImageEncoder" in encoder["classes"]
    assert all(c.split(".")[0] in ("src", "open_clip", "torch") for c in encoder["classes"]), (
        encoder["classes"]
    )
    for head in [tmp_path / "head.pt", *built]:
        assert got[str(head)]["classes"] == ["src.modeling.ClassificationHead"]
    # and this repo's restricted reader still reads them, without importing any of those classes
    assert list(load_checkpoint(tmp_path / "zeroshot.pt").state_dict) == list(
        encoder_state_dict(clip)
    )


def test_training_checkpoint_metadata_loads_and_code_inside_it_is_still_refused(tmp_path):
    """open_clip's and timm's training scripts save numpy scalars, dtypes and arrays, argparse
    Namespaces and optimizer state beside the weights: plain data, loaded. The same file with a
    callable inside (directly, or as an object array's element) is refused."""
    import argparse

    import numpy as np

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    metadata = {
        "epoch": np.int64(3),
        "metric": np.float32(0.5),
        "dtype": np.dtype("float16"),
        "history": np.arange(4.0),
        "args": argparse.Namespace(lr=np.float64(1e-3), model="ViT-B-32"),
        "optimizer": optimizer.state_dict(),
    }
    good = tmp_path / "epoch_3.pt"
    torch.save({"state_dict": model.state_dict(), **metadata}, good)
    loaded = load_checkpoint(good)
    assert loaded.state_dict.keys() == {"weight", "bias"}
    assert torch.equal(loaded.state_dict["weight"], model.weight.detach())
    for name, evil in [
        ("call", _RunsACommand(tmp_path / "pwned")),
        ("array", np.array([_RunsACommand(tmp_path / "pwned")], dtype=object)),
    ]:
        path = tmp_path / f"{name}.pt"
        torch.save({"state_dict": model.state_dict(), **metadata, "x": evil}, path)
        with pytest.raises(CheckpointError, match="refused"):
            load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_checkpoints_in_the_other_layout_load_or_say_what_to_do(mini, tmp_path):
    """Hugging Face CLIP keys in a single file (a bare model.safetensors, a finetuned.safetensors),
    open_clip keys in a Hugging Face folder: read, with the same numbers; a --checkpoint-format
    that excludes what is on disk names the file found and the flag to drop."""
    from safetensors.torch import save_file
    from test_pipeline import _argv, run

    from adamerging.checkpoints.hf_export import open_clip_to_hf, save_hf_checkpoint

    expert_file = mini / "checkpoints" / "mini" / "MNIST" / "finetuned.pt"
    baseline = run("task_arithmetic", _argv(mini))
    encoder = load_checkpoint(expert_file).state_dict
    visual = {k[len("model.") :]: v for k, v in encoder.items() if k.startswith("model.visual.")}
    bare = tmp_path / "bare" / "model.safetensors"
    bare.parent.mkdir()
    save_file(dict(open_clip_to_hf(visual)), bare)
    wrong_keys = tmp_path / "oc_in_hf"
    save_hf_checkpoint(wrong_keys, visual, hf_config_from_open_clip(create_clip("mini")))
    save_file({k: v.contiguous() for k, v in visual.items()}, wrong_keys / "model.safetensors")
    for given in (bare, wrong_keys):
        result = run("task_arithmetic", _argv(mini, "--finetuned", f"MNIST={given}"))
        assert result["accuracy"] == baseline["accuracy"], given
    with pytest.raises(FileNotFoundError, match=r"there is a task-vectors file .*drop the flag"):
        run("task_arithmetic", _argv(mini, "--checkpoint-format", "hf"))
