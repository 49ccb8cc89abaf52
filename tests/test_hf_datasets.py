"""Local Hugging Face dataset copies as a data source: reading, class-order mapping, preprocessing
cache."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

import adamerging  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_hf_data import write_hf_dataset  # noqa: E402
from model_fixtures import mini_argv, write_mini_problem  # noqa: E402

from adamerging.datasets.preprocessing import _transform, preprocess_images
from adamerging.datasets.splits import read_hf_split, read_split, read_task_split
from adamerging.datasets.tasks import task_folder
from adamerging.runtime.errors import DatasetError

_PROMPTS = json.loads(
    (Path(adamerging.__file__).parent / "data" / "zeroshot_prompts.json").read_text(
        encoding="utf-8"
    )
)


def _permuted_copy(
    tmp_path: Path,
    task: str,
    head_names: list[str],
    seed: int = 0,
    form: str = "parquet",
    n: int = 30,
):
    """A task folder whose ClassLabel order is a permutation of `head_names`; returns (images, head
    labels)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(head_names))
    assert (order != np.arange(len(order))).any()
    dataset_names = [head_names[i] for i in order]
    labels = rng.integers(0, len(head_names), size=n)
    images = write_hf_dataset(
        task_folder(task, tmp_path), dataset_names, labels.tolist(), form=form, seed=seed
    )
    return images, order[labels]  # the head index of each row's class


@pytest.mark.parametrize("form", ["parquet", "save_to_disk"])
def test_permuted_class_label_order_is_mapped_onto_the_head_order(
    tmp_path: Path, form: str
) -> None:
    head = list(_PROMPTS["classnames"]["RESISC45"])
    _, expected = _permuted_copy(tmp_path, "RESISC45", head, form=form)
    split = read_task_split("RESISC45", tmp_path, "test")  # auto-detected
    assert split.classnames == head
    assert split.labels.dtype == np.int64 and split.labels.tolist() == expected.tolist()
    assert split.source.startswith(
        "Hugging Face " + ("parquet" if form == "parquet" else "save_to_disk")
    )
    assert len(split) == 30


def test_names_match_up_to_case_and_underscores(tmp_path: Path) -> None:
    head = list(_PROMPTS["classnames"]["RESISC45"])
    rng = np.random.default_rng(1)
    order = rng.permutation(len(head))
    names = [head[i].upper().replace(" ", "_") for i in order]
    labels = rng.integers(0, len(head), size=12)
    write_hf_dataset(task_folder("RESISC45", tmp_path), names, labels.tolist())
    assert read_hf_split("RESISC45", tmp_path).labels.tolist() == order[labels].tolist()


def test_integer_class_names_are_class_ids(tmp_path: Path) -> None:
    # GTSRB's built-in names are descriptions; a dataset naming its classes "0".."42" (in any order)
    # means ids.
    order = np.random.default_rng(2).permutation(43)
    labels = np.arange(43)
    write_hf_dataset(
        task_folder("GTSRB", tmp_path), [str(i) for i in order], labels.tolist(), shards=1
    )
    split = read_hf_split("GTSRB", tmp_path)
    assert split.labels.tolist() == order.tolist()
    assert split.classnames == _PROMPTS["classnames"]["GTSRB"]


def test_mismatching_names_are_refused_in_one_line(tmp_path: Path) -> None:
    head = list(_PROMPTS["classnames"]["RESISC45"])
    names = head[:-1] + ["not a scene"]
    write_hf_dataset(task_folder("RESISC45", tmp_path), names, [0, 1, 44], shards=1)
    with pytest.raises(DatasetError) as e:
        read_task_split("RESISC45", tmp_path, data_format="hf")
    msg = str(e.value)
    assert (
        "\n" not in msg
        and "'not a scene'" in msg
        and repr(head[-1]) in msg
        and "classnames.txt" in msg
    )


def test_classnames_override_is_the_head_order(tmp_path: Path) -> None:
    folder = task_folder("DTD", tmp_path)
    write_hf_dataset(folder, ["zigzag", "banded", "dotted"], [0, 1, 2, 0], shards=1)
    (folder / "classnames.txt").write_text("dotted\nzigzag\nbanded\n", encoding="utf-8")
    split = read_hf_split("DTD", tmp_path)
    assert split.classnames == ["dotted", "zigzag", "banded"] and split.labels.tolist() == [
        1,
        2,
        0,
        1,
    ]


def test_sun397_and_dtd_heads_use_sorted_class_names(tmp_path: Path) -> None:
    write_hf_dataset(
        task_folder("SUN397", tmp_path),
        ["waterfall block", "abbey", "bedroom"],
        [0, 1, 2],
        shards=1,
    )
    split = read_hf_split("SUN397", tmp_path)
    assert split.classnames == [
        "abbey",
        "bedroom",
        "waterfall block",
    ] and split.labels.tolist() == [2, 0, 1]
    other = tmp_path / "sun_paths"  # class names as SUN paths, as some copies give them
    write_hf_dataset(
        task_folder("SUN397", other),
        ["/w/waterfall/block", "/a/abbey", "/b/bedroom"],
        [0, 1, 2],
        shards=1,
    )
    split = read_hf_split("SUN397", other)
    assert split.classnames == [
        "abbey",
        "bedroom",
        "waterfall block",
    ] and split.labels.tolist() == [2, 0, 1]


def test_eurosat_folder_names_count_as_prompt_names(tmp_path: Path) -> None:
    mapping = _PROMPTS["classnames"]["EuroSAT_folder_to_openai"]
    folders = sorted(mapping)
    write_hf_dataset(task_folder("EuroSAT", tmp_path), folders[::-1], [0, 9], shards=1)
    split = read_hf_split("EuroSAT", tmp_path)
    assert split.classnames == [mapping[f] for f in folders] and split.labels.tolist() == [9, 0]


def test_cars_order_from_the_devkit_or_a_warning(tmp_path: Path) -> None:
    folder = task_folder("Cars", tmp_path)
    write_hf_dataset(folder, ["Car B 2012", "Car A 2010", "Car C 2011"], [0, 1, 2], shards=1)
    with pytest.warns(UserWarning, match="ClassLabel order"):
        split = read_hf_split("Cars", tmp_path)
    assert split.labels.tolist() == [0, 1, 2]
    (folder / "devkit").mkdir()
    names = np.array(["Car A 2010", "Car B 2012", "Car C 2011"], dtype=object)
    scipy.io.savemat(folder / "devkit" / "cars_meta.mat", {"class_names": names.reshape(1, -1)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = read_hf_split("Cars", tmp_path)
    assert split.classnames == [
        "Car A 2010",
        "Car B 2012",
        "Car C 2011",
    ] and split.labels.tolist() == [1, 0, 2]


def test_same_preprocessing_and_cache_as_the_folder_readers(tmp_path: Path) -> None:
    images, _ = _permuted_copy(tmp_path, "RESISC45", list(_PROMPTS["classnames"]["RESISC45"]), n=7)
    split = read_task_split("RESISC45", tmp_path)
    cache = tmp_path / "cache"
    x = preprocess_images(split, 6, cache_dir=cache, num_workers=1)
    want = np.stack([_transform(Image.fromarray(a), 6) for a in images])
    # row order kept across shards
    assert x.shape == (7, 3, 6, 6) and np.array_equal(x.numpy(), want)
    assert (cache / "RESISC45_test_6.npy").is_file()
    again = preprocess_images(
        read_task_split("RESISC45", tmp_path), 6, cache_dir=cache, num_workers=1
    )
    assert isinstance(again.numpy().base, np.memmap) or again.numpy().base is not None
    meta = json.loads((cache / "RESISC45_test_6.json").read_text(encoding="utf-8"))
    assert meta["fingerprint"]["source"] == split.source and "encoded_sha1" in meta["fingerprint"]
    # Different image bytes under the same names must rebuild the cache.
    write_hf_dataset(
        task_folder("RESISC45", tmp_path),
        split.classnames,
        split.labels.tolist(),
        seed=9,
        shards=2,
    )
    rebuilt = preprocess_images(
        read_task_split("RESISC45", tmp_path), 6, cache_dir=cache, num_workers=1
    )
    assert not np.array_equal(rebuilt.numpy(), want)


def test_format_flag_forces_a_reader(tmp_path: Path) -> None:
    _permuted_copy(tmp_path, "RESISC45", list(_PROMPTS["classnames"]["RESISC45"]), n=3)
    with pytest.raises(DatasetError, match="resisc45-test.txt"):
        read_task_split("RESISC45", tmp_path, data_format="folders")
    with pytest.raises(DatasetError, match="Hugging Face dataset"):
        read_task_split("MNIST", tmp_path, data_format="hf")
    with pytest.raises(DatasetError, match="unknown data format"):
        read_task_split("MNIST", tmp_path, data_format="zip")


def test_missing_split_names_what_was_found(tmp_path: Path) -> None:
    write_hf_dataset(
        task_folder("MNIST", tmp_path),
        [str(i) for i in range(10)],
        [1, 2],
        split="train",
        shards=1,
    )
    with pytest.raises(
        DatasetError, match=r"no parquet shards of split 'test'.*train-00000-of-00001"
    ):
        read_hf_split("MNIST", tmp_path, "test")


def test_svhn_config_folder_is_found(tmp_path: Path) -> None:
    # ufldl-stanford/svhn keeps its shards under the config folder cropped_digits/.
    write_hf_dataset(
        task_folder("SVHN", tmp_path),
        [str(i) for i in range(10)],
        [3, 0, 9],
        subfolder="cropped_digits",
        shards=1,
    )
    assert read_task_split("SVHN", tmp_path).labels.tolist() == [3, 0, 9]


def test_pipeline_gives_the_same_accuracies_from_a_permuted_hf_copy(tmp_path: Path) -> None:
    from adamerging.commands import pipeline

    def run(method: str, argv: list[str]) -> dict:
        return pipeline.run(method, pipeline.parse_config(method, argv))

    root = write_mini_problem(tmp_path, n_per_class=3)
    argv = mini_argv(root, "--overwrite", tasks="MNIST,SVHN,EuroSAT")
    folders = run("task_arithmetic", argv)["accuracy"]
    for task in ("MNIST", "SVHN"):  # same images, ClassLabel order reversed, folder layout gone
        split = read_split(task, root / "data", "test")
        folder = task_folder(task, root / "data")
        folder.rename(folder.with_name(folder.name + "_folders"))
        names = [str(d) for d in range(9, -1, -1)]
        write_hf_dataset(
            folder, names, (9 - split.labels).tolist(), images=list(split.images), shards=2
        )
        assert read_task_split(task, root / "data").source.startswith("Hugging Face parquet")
    hf = run("task_arithmetic", argv + ["--data-format", "auto"])["accuracy"]
    assert hf == folders
    with pytest.raises(DatasetError):
        run("task_arithmetic", argv + ["--data-format", "folders"])
