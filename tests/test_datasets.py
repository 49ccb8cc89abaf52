"""Tests of adamerging.datasets on tiny fake datasets written in the real layouts
(tests/fake_data.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import adamerging  # noqa: F401  (before torchvision: installs the compat shim)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_data import read_expected, write_fake_dataset  # noqa: E402

from adamerging.datasets import preprocessing
from adamerging.datasets.labels import task_templates
from adamerging.datasets.preprocessing import _load_image, preprocess_images
from adamerging.datasets.splits import parse_test_split, read_split
from adamerging.datasets.tasks import PAPER_TASKS, TASKS, Split, canonical_task, task_folder
from adamerging.runtime.errors import DatasetError


def _check_against_expected(split: Split, root: Path, which: str) -> None:
    exp = read_expected(split.task, root, which)
    assert len(split) == exp["n"]
    assert split.labels.dtype == np.int64
    assert split.labels.tolist() == exp["labels"]
    assert split.classnames == exp["classnames"]
    if exp["files"] is not None:
        assert [os.path.basename(p) for p in split.images] == exp["files"]
        assert all(os.path.isfile(p) for p in split.images)
    else:
        assert isinstance(split.images, np.ndarray) and split.images.dtype == np.uint8
        assert split.images.ndim == 4 and split.images.shape[-1] == 3
        assert (
            hashlib.sha1(np.ascontiguousarray(split.images).data).hexdigest() == exp["images_sha1"]
        )


# ----- reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["task_vectors", "fork"])
@pytest.mark.parametrize("task", PAPER_TASKS)
def test_test_split_reads_back(tmp_path: Path, task: str, layout: str) -> None:
    write_fake_dataset(task, tmp_path, n_per_class=1 if task == "Cars" else 2, layout=layout)
    split = read_split(task, tmp_path, "test")
    assert split.task == task and split.split == "test"
    _check_against_expected(split, tmp_path, "test")
    full = {
        "Cars": 196,
        "RESISC45": 45,
        "EuroSAT": 10,
        "SVHN": 10,
        "GTSRB": 43,
        "MNIST": 10,
        "DTD": 47,
    }
    if task in full:
        assert len(split.classnames) == full[task]


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_train_split_reads_back(tmp_path: Path, task: str) -> None:
    write_fake_dataset(task, tmp_path, n_per_class=1, split="both")
    _check_against_expected(read_split(task, tmp_path, "train"), tmp_path, "train")
    _check_against_expected(read_split(task, tmp_path, "test"), tmp_path, "test")


def test_task_lookup_is_case_insensitive(tmp_path: Path) -> None:
    write_fake_dataset("MNIST", tmp_path, n_per_class=1)
    assert read_split("mnist", tmp_path).task == "MNIST"
    assert read_split("MNIST", tmp_path).task == "MNIST"
    assert canonical_task("eurosat") == "EuroSAT"
    with pytest.raises(DatasetError) as err:
        read_split("ImageNet", tmp_path)
    for t in PAPER_TASKS:
        assert t in str(err.value)


def test_cars_labels_are_one_based_in_the_mat(tmp_path: Path) -> None:
    import scipy.io

    base = write_fake_dataset("Cars", tmp_path, n_per_class=1, num_classes=5)
    annos = scipy.io.loadmat(base / "cars_test_annos_withlabels.mat", squeeze_me=True)[
        "annotations"
    ]
    stored = np.asarray([int(a["class"]) for a in annos])
    assert stored.min() == 1 and stored.max() == 5
    split = read_split("Cars", tmp_path)
    assert split.labels.tolist() == (stored - 1).tolist()
    assert split.classnames[3] == "Make3 Model 3 2003"  # cars_meta.mat name, `_` -> space


def test_svhn_label_10_means_zero(tmp_path: Path) -> None:
    import scipy.io

    base = write_fake_dataset("SVHN", tmp_path, n_per_class=3)
    mat = scipy.io.loadmat(base / "test_32x32.mat")
    y = mat["y"].reshape(-1)
    assert (y == 10).sum() == 3 and (y == 0).sum() == 0
    split = read_split("SVHN", tmp_path)
    assert (split.labels[y == 10] == 0).all()
    assert (split.labels[y != 10] == y[y != 10]).all()
    np.testing.assert_array_equal(split.images[5], mat["X"][:, :, :, 5])


def test_mnist_gz_files(tmp_path: Path) -> None:
    base = write_fake_dataset("MNIST", tmp_path, n_per_class=2)
    before = read_split("MNIST", tmp_path)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        raw = base / "raw" / name
        with gzip.open(f"{raw}.gz", "wb") as f:
            f.write(raw.read_bytes())
        raw.unlink()
    after = read_split("MNIST", tmp_path)
    np.testing.assert_array_equal(after.labels, before.labels)
    np.testing.assert_array_equal(after.images, before.images)
    # grayscale replicated to 3 channels
    assert (after.images[..., 0] == after.images[..., 2]).all()


def test_test_dir_choice_when_both_layouts_exist(tmp_path: Path) -> None:
    write_fake_dataset("DTD", tmp_path, n_per_class=1, num_classes=3, layout="task_vectors")
    write_fake_dataset("DTD", tmp_path, n_per_class=2, num_classes=3, layout="fork")
    assert read_split("DTD", tmp_path).source.endswith("val")  # task-vectors' folder first
    picked = read_split("DTD", tmp_path, test_dir="test")
    assert picked.source.endswith("test") and len(picked) == 6


@pytest.mark.parametrize("task", ["SUN397", "DTD"])
def test_ambiguous_test_split_warns_names_the_folder_and_is_recorded(
    tmp_path: Path, task: str, caplog
) -> None:
    write_fake_dataset(task, tmp_path, n_per_class=1, num_classes=3, layout="task_vectors")
    write_fake_dataset(task, tmp_path, n_per_class=2, num_classes=3, layout="fork")
    base = task_folder(task, tmp_path)
    with caplog.at_level("WARNING", logger="adamerging.datasets"):
        default = read_split(task, tmp_path)
    assert default.source == str(base / "val") and len(default) == 3  # the current default is kept
    notes = [r.getMessage() for r in caplog.records if "test split candidate" in r.getMessage()]
    assert (
        len(notes) == 1 and f"using {base / 'val'}" in notes[0] and str(base / "test") in notes[0]
    )
    assert f"--test-split {task}=" in notes[0]
    assert default.record() == {
        "split": "test",
        "source": str(base / "val"),
        "n_images": 3,
        "test_split": "val",
        "chosen_by": "default",
        "paper_n_images": (
            list(TASKS[task].paper_test_size)
            if task == "SUN397"
            else TASKS[task].paper_test_size[0]
        ),
    }
    caplog.clear()
    with caplog.at_level("WARNING", logger="adamerging.datasets"):
        chosen = read_split(task, tmp_path, test_dir=parse_test_split("test")[task])
    assert chosen.source == str(base / "test") and len(chosen) == 6
    assert (
        chosen.record()["chosen_by"] == "--test-split" and chosen.record()["test_split"] == "test"
    )
    assert not [r for r in caplog.records if "test split candidate" in r.getMessage()]
    # one folder only: no ambiguity, no warning about it
    import shutil

    shutil.rmtree(base / "val")
    caplog.clear()
    with caplog.at_level("WARNING", logger="adamerging.datasets"):
        assert read_split(task, tmp_path).source == str(base / "test")
    assert not [r for r in caplog.records if "test split candidate" in r.getMessage()]


def test_test_split_flag_values() -> None:
    assert parse_test_split(None) == {}
    assert parse_test_split("test") == {"SUN397": "test", "DTD": "test"}
    assert parse_test_split("val, eurosat=val,RESISC45=test") == {
        "SUN397": "val",
        "DTD": "val",
        "EuroSAT": "val",
        "RESISC45": "test",
    }
    with pytest.raises(DatasetError, match="MNIST: has a single test split"):
        parse_test_split("MNIST=val")
    with pytest.raises(
        DatasetError, match=r"DTD: --test-split 'train' .*expected one of val, test"
    ):
        parse_test_split("DTD=train")
    with pytest.raises(DatasetError, match="unknown task"):
        parse_test_split("Flowers=val")


def test_validation_split_of_eurosat_and_resisc45_only_when_chosen(tmp_path: Path) -> None:
    for task in ("EuroSAT", "RESISC45"):
        write_fake_dataset(task, tmp_path, n_per_class=1)
    base = task_folder("EuroSAT", tmp_path)
    (base / "test").rename(base / "val")
    with pytest.raises(DatasetError, match=r"EuroSAT_splits/test"):
        read_split("EuroSAT", tmp_path)  # never guessed
    assert read_split("EuroSAT", tmp_path, test_dir="val").record()["source"] == str(base / "val")
    lists = task_folder("RESISC45", tmp_path)
    (lists / "resisc45-test.txt").rename(lists / "resisc45-val.txt")
    assert read_split("RESISC45", tmp_path, test_dir="val").source == str(
        lists / "resisc45-val.txt"
    )


def test_test_set_size_differing_from_the_paper_warns(tmp_path: Path, caplog) -> None:
    write_fake_dataset("MNIST", tmp_path, n_per_class=3)
    with caplog.at_level("WARNING", logger="adamerging.datasets"):
        split = read_split("MNIST", tmp_path)
    notes = [r.getMessage() for r in caplog.records if "the published test set" in r.getMessage()]
    assert (
        len(notes) == 1
        and "MNIST: read 30 test images" in notes[0]
        and "10000" in notes[0]
        and split.source in notes[0]
    )
    assert split.record()["n_images"] == 30 and split.record()["paper_n_images"] == 10000
    write_fake_dataset("MNIST", tmp_path / "full", n_per_class=1000, image_size=2)
    caplog.clear()
    with caplog.at_level("WARNING", logger="adamerging.datasets"):
        assert len(read_split("MNIST", tmp_path / "full")) == 10000
    assert not caplog.records
    # a miniature benchmark (classnames.txt) is small by design: no warning
    (task_folder("MNIST", tmp_path) / "classnames.txt").write_text(
        "".join(f"{i}\n" for i in range(10))
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="adamerging.datasets"):
        read_split("MNIST", tmp_path)
    assert not caplog.records


def test_two_different_cars_annotation_copies_warn(tmp_path: Path, caplog) -> None:
    base = write_fake_dataset("Cars", tmp_path, n_per_class=1, num_classes=4)
    (base / "classnames.txt").write_text("a\nb\nc\nd\n")
    (base / "devkit" / "cars_test_annos_withlabels.mat").write_bytes(
        (base / "cars_test_annos_withlabels.mat").read_bytes()
    )
    with caplog.at_level("WARNING", logger="adamerging.datasets"):
        read_split("Cars", tmp_path)
    assert not caplog.records  # identical copies: nothing to choose
    (base / "devkit" / "cars_test_annos_withlabels.mat").write_bytes(b"other")
    with caplog.at_level("WARNING", logger="adamerging.datasets"):
        split = read_split("Cars", tmp_path)
    assert split.source == str(base / "cars_test_annos_withlabels.mat")
    assert any(
        "two different labelled test annotation files" in r.getMessage()
        and split.source in r.getMessage()
        for r in caplog.records
    )


# ----- overrides ----------------------------------------------------------------------------------


def test_classnames_override(tmp_path: Path) -> None:
    base = write_fake_dataset("SUN397", tmp_path, n_per_class=1, num_classes=3)
    assert read_split("SUN397", tmp_path).classnames == ["abbey", "airplane cabin", "bedroom"]
    (base / "classnames.txt").write_text("one\ntwo\nthree\n")
    assert read_split("SUN397", tmp_path).classnames == ["one", "two", "three"]
    (base / "classnames.txt").write_text("one\ntwo\n")
    with pytest.raises(DatasetError, match="classnames.txt"):
        read_split("SUN397", tmp_path)


def test_fewer_classes_than_fixed_list_needs_classnames_txt(tmp_path: Path) -> None:
    base = write_fake_dataset("RESISC45", tmp_path, n_per_class=1, num_classes=5)
    with pytest.raises(DatasetError, match=r"found 5 class folders.*45 names.*classnames\.txt"):
        read_split("RESISC45", tmp_path)
    names = ["plane", "port", "diamond", "court", "beach"]
    (base / "classnames.txt").write_text("\n".join(names))
    split = read_split("RESISC45", tmp_path)
    assert split.classnames == names
    assert split.labels.tolist() == read_expected("RESISC45", tmp_path)["labels"]


def test_label_only_tasks_check_labels_against_names(tmp_path: Path) -> None:
    base = write_fake_dataset("GTSRB", tmp_path, n_per_class=1, num_classes=4)
    assert len(read_split("GTSRB", tmp_path).classnames) == 43  # labels 0..3 fit the fixed list
    (base / "classnames.txt").write_text("a\nb\nc\nd\n")
    assert read_split("GTSRB", tmp_path).classnames == ["a", "b", "c", "d"]
    (base / "classnames.txt").write_text("a\nb\nc\n")
    with pytest.raises(DatasetError, match=r"range over \[0, 3\].*3 names"):
        read_split("GTSRB", tmp_path)


def test_eurosat_unknown_folder_needs_classnames_txt(tmp_path: Path) -> None:
    base = write_fake_dataset("EuroSAT", tmp_path, n_per_class=1, num_classes=3)
    assert read_split("EuroSAT", tmp_path).classnames == [
        "annual crop land",
        "forest",
        "brushland or shrubland",
    ]
    (base / "test" / "Glacier").mkdir()
    (base / "test" / "Glacier" / "x.jpg").write_bytes(
        (base / "test" / "Forest" / "img_0000.jpg").read_bytes()
    )
    with pytest.raises(DatasetError, match="Glacier"):
        read_split("EuroSAT", tmp_path)


def test_templates(tmp_path: Path) -> None:
    base = write_fake_dataset("MNIST", tmp_path, n_per_class=1)
    assert task_templates("mnist", tmp_path) == ['a photo of the number: "{c}".']
    assert len(task_templates("Cars", tmp_path / "nowhere")) == 8  # built-ins need no data
    (base / "templates.txt").write_text("a {c}.\na digit {c}.\n")
    assert task_templates("MNIST", tmp_path) == ["a {c}.", "a digit {c}."]
    (base / "templates.txt").write_text("a {c}.\nno placeholder\n")
    with pytest.raises(DatasetError, match="placeholder"):
        task_templates("MNIST", tmp_path)


# ----- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_missing_dataset_names_expected_path(tmp_path: Path, task: str) -> None:
    with pytest.raises(DatasetError) as err:
        read_split(task, tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{task}: expected {tmp_path / TASKS[task].folder}")
    assert "not found" in msg and str(tmp_path) in msg


def test_missing_mnist_message(tmp_path: Path) -> None:
    (tmp_path / "MNIST").mkdir()
    with pytest.raises(DatasetError) as err:
        read_split("MNIST", tmp_path)
    msg = str(err.value)
    assert (
        f"expected {tmp_path / 'MNIST' / 'raw' / 't10k-images-idx3-ubyte'} (torchvision's MNIST"
        " layout)" in msg
    )
    assert f"{tmp_path / 'MNIST'} exists but is empty" in msg


def test_missing_sun397_mentions_both_layouts(tmp_path: Path) -> None:
    (tmp_path / "sun397" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        read_split("SUN397", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "sun397" / "val") in msg and str(tmp_path / "sun397" / "test") in msg
    assert "train" in msg  # what was found instead


def test_empty_class_folder(tmp_path: Path) -> None:
    base = write_fake_dataset("DTD", tmp_path, n_per_class=1, num_classes=3)
    (base / "val" / "zz_empty").mkdir()
    with pytest.raises(DatasetError, match=str(base / "val" / "zz_empty")):
        read_split("DTD", tmp_path)


def test_train_and_test_classes_must_agree(tmp_path: Path) -> None:
    write_fake_dataset("DTD", tmp_path, n_per_class=1, num_classes=3, split="test")
    write_fake_dataset("DTD", tmp_path, n_per_class=1, num_classes=4, split="train")
    with pytest.raises(DatasetError, match="differ"):
        read_split("DTD", tmp_path)


def test_split_file_listing_missing_image(tmp_path: Path) -> None:
    base = write_fake_dataset("RESISC45", tmp_path, n_per_class=1)
    gone = base / "NWPU-RESISC45" / "beach" / "beach_001.jpg"
    gone.unlink()
    with pytest.raises(DatasetError, match=str(gone)):
        read_split("RESISC45", tmp_path)
    gbase = write_fake_dataset("GTSRB", tmp_path, n_per_class=1, num_classes=3)
    gone = gbase / "GTSRB" / "Final_Test" / "Images" / "00001.ppm"
    gone.unlink()
    with pytest.raises(DatasetError, match=str(gone)):
        read_split("GTSRB", tmp_path)


def test_cars_unlabelled_annotations_rejected(tmp_path: Path) -> None:
    base = write_fake_dataset("Cars", tmp_path, n_per_class=1, num_classes=3)
    (base / "devkit" / "cars_test_annos.mat").replace(base / "cars_test_annos_withlabels.mat")
    with pytest.raises(DatasetError, match="'class'"):
        read_split("Cars", tmp_path)


# ----- preprocessing ------------------------------------------------------------------------------


def _stripes(w: int, h: int) -> np.ndarray:
    """Columns: left quarter red, middle half green, right quarter blue (an [h, w, 3] image)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 4, 0] = 255
    img[:, w // 4 : w - w // 4, 1] = 255
    img[:, w - w // 4 :, 2] = 255
    return img


def test_preprocess_shape_and_centre_crop(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(_stripes(16, 8)).save(tmp_path / "wide.png")
    # rows striped
    Image.fromarray(np.ascontiguousarray(_stripes(16, 8).transpose(1, 0, 2))).save(
        tmp_path / "tall.png"
    )
    split = Split(
        "DTD",
        "test",
        ["a"],
        np.zeros(2, np.int64),
        [str(tmp_path / "wide.png"), str(tmp_path / "tall.png")],
        str(tmp_path),
    )
    out = preprocess_images(split, 8, num_workers=1)
    assert out.shape == (2, 3, 8, 8) and str(out.dtype) == "torch.uint8"
    # 16x8 -> shorter side already 8, centre crop keeps columns 4..11: all green.
    assert (out[0, 1] == 255).all() and (out[0, 0] == 0).all() and (out[0, 2] == 0).all()
    # 16 high x 8 wide -> crop keeps rows 4..11 of the (row-striped) image: all green.
    assert (out[1, 1] == 255).all() and (out[1, 0] == 0).all()


def test_preprocess_matches_torchvision_clip_transform(tmp_path: Path) -> None:
    from PIL import Image
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(37, 20), (20, 45), (30, 30), (11, 13)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    Image.fromarray(rng.integers(0, 256, (25, 17), dtype=np.uint8), mode="L").save(
        tmp_path / "g.png"
    )
    paths.append(str(tmp_path / "g.png"))
    split = Split("DTD", "test", ["a"], np.zeros(len(paths), np.int64), paths, str(tmp_path))
    ours = preprocess_images(split, 16, num_workers=2)
    tf = T.Compose(
        [T.Resize(16, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(16), T.PILToTensor()]
    )
    for i, p in enumerate(paths):
        ref = tf(Image.open(p).convert("RGB"))
        assert (ours[i] == ref).all(), p


def test_preprocess_array_images(tmp_path: Path) -> None:
    write_fake_dataset("MNIST", tmp_path, n_per_class=1, image_size=6)
    split = read_split("MNIST", tmp_path)
    out = preprocess_images(split, 12, progress=True)
    assert out.shape == (10, 3, 12, 12)
    assert (out[:, 0] == out[:, 1]).all()


def test_cache_reused_and_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    base = write_fake_dataset("EuroSAT", data, n_per_class=2, num_classes=3, image_size=10)
    split = read_split("EuroSAT", data)
    first = preprocess_images(split, 8, cache_dir=cache)
    # no temp files left
    assert sorted(os.listdir(cache)) == ["EuroSAT_test_8.json", "EuroSAT_test_8.npy"]
    meta = json.loads((cache / "EuroSAT_test_8.json").read_text())
    assert meta["n"] == 6 and meta["fingerprint"]["size"] == 8

    def boom(item):  # any decode now fails: a cache hit must not decode
        raise RuntimeError("decoded")

    monkeypatch.setattr(preprocessing, "_load_image", boom)
    again = preprocess_images(split, 8, cache_dir=cache)
    assert (again == first).all() and again.shape == (6, 3, 8, 8)

    # Another size is another cache file: it must decode.
    with pytest.raises(DatasetError, match="decoded"):
        preprocess_images(split, 9, cache_dir=cache)
    # the failed build left no temp file
    assert not [f for f in os.listdir(cache) if f.startswith(".")]

    # One more image changes the fingerprint: rebuilt.
    (base / "test" / "Forest" / "img_0000.jpg").replace(base / "test" / "Forest" / "img_0009.jpg")
    (base / "test" / "Forest" / "img_0010.jpg").write_bytes(
        (base / "test" / "Forest" / "img_0001.jpg").read_bytes()
    )
    grown = read_split("EuroSAT", data)
    with pytest.raises(DatasetError, match="decoded"):
        preprocess_images(grown, 8, cache_dir=cache)
    monkeypatch.undo()
    rebuilt = preprocess_images(grown, 8, cache_dir=cache)
    assert rebuilt.shape == (7, 3, 8, 8)
    assert (rebuilt == preprocess_images(grown, 8)).all()


def test_array_cache_fingerprint_sees_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_dataset("SVHN", tmp_path / "data", n_per_class=1)
    split = read_split("SVHN", tmp_path / "data")
    first = preprocess_images(split, 8, cache_dir=tmp_path / "cache")
    split.images[0] = 255 - split.images[0]
    calls = []
    real = _load_image
    monkeypatch.setattr(preprocessing, "_load_image", lambda item: calls.append(1) or real(item))
    second = preprocess_images(split, 8, cache_dir=tmp_path / "cache")
    assert len(calls) == 10  # rebuilt
    assert (second[1:] == first[1:]).all() and not (second[0] == first[0]).all()


def test_an_image_edited_in_place_rebuilds_the_cache(tmp_path: Path) -> None:
    """Not the first or last file, same name: only its content and time change."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    base = write_fake_dataset("EuroSAT", data, n_per_class=3, num_classes=3, image_size=10)
    split = read_split("EuroSAT", data)
    first = preprocess_images(split, 8, cache_dir=cache)
    middle = Path(split.images[len(split) // 2])
    assert middle not in (Path(split.images[0]), Path(split.images[-1])) and base in middle.parents
    from PIL import Image

    with Image.open(middle) as im:
        edited = Image.eval(im.convert("RGB"), lambda v: 255 - v)
    edited.save(middle, format="PNG" if middle.suffix == ".png" else "JPEG")
    st = middle.stat()
    os.utime(middle, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    again = preprocess_images(read_split("EuroSAT", data), 8, cache_dir=cache)
    assert not (again == first).all()
    assert (again == preprocess_images(read_split("EuroSAT", data), 8)).all()


def test_16_bit_and_transparent_images_decode_by_range_and_on_white_in_every_path(
    tmp_path: Path,
) -> None:
    """A 16-bit PNG is scaled by its range (a bare convert('RGB') clips it to white); a transparent
    pixel is white (a bare convert leaves its stored black). Files, encoded bytes (the Hugging Face
    copies) decode alike, and the cache stores what they decode."""
    from PIL import Image

    from adamerging.datasets.preprocessing import _load_image

    gray = np.array([[0, 16384, 32768, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "deep.png")
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:, 2:] = (10, 20, 30, 255)  # right half opaque, left half transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    deep = np.asarray(_load_image(str(tmp_path / "deep.png")))
    assert deep[0, :, 0].tolist() == [0, 64, 128, 255] and (deep[..., 0] == deep[..., 2]).all()
    clear = np.asarray(_load_image(str(tmp_path / "clear.png")))
    assert clear[0, 0].tolist() == [255, 255, 255] and clear[0, 3].tolist() == [10, 20, 30]
    for name in ("deep.png", "clear.png"):
        from_bytes = np.asarray(_load_image((tmp_path / name).read_bytes()))
        assert (from_bytes == np.asarray(_load_image(str(tmp_path / name)))).all()
