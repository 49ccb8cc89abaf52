"""The 14- and 20-task suites: the registry's 12 added tasks, the readers of their layouts
(ImageFolder trees, torchvision's files, Hugging Face copies), `--tasks 14|20`, the download plan,
and 20-task runs end to end on mini checkpoints in the task-vectors, TALL masks and Hugging Face
layouts."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adamerging.datasets.classnames import prompts
from adamerging.datasets.splits import read_task_split
from adamerging.datasets.tasks import PAPER_TASKS, SUITE_TASKS, SUITES, TASKS
from adamerging.run.tasks import parse_tasks
from adamerging.runtime.errors import DatasetError

SUITE_20 = SUITES["20"]


def _png(path: Path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


def write_suite_folders(data: Path, tasks, classes=(0, 1), split: str = "test") -> None:
    """ImageFolder trees <data>/<folder>/<split>/<class id>/0.png, one image per class."""
    for task in tasks:
        for c in classes:
            _png(data / TASKS[task].folder / split / str(c) / "0.png", 40 * c + 10)


def test_the_suites_are_tall_masks_tasks_in_order_with_their_facts():
    assert len(SUITES["8"]) == 8 and len(SUITES["14"]) == 14 and len(SUITE_20) == 20
    assert SUITE_20[:8] == PAPER_TASKS and SUITES["14"] == SUITE_20[:14]
    assert SUITE_20[8:14] == ("STL10", "OxfordIIITPet", "Flowers102", "CIFAR100", "PCAM", "FER2013")
    assert parse_tasks("TALL20", Path()) == list(SUITE_20) == parse_tasks(" 20 ", Path())
    classes = {"CIFAR100": 100, "Flowers102": 102, "OxfordIIITPet": 37, "EMNIST": 26, "PCAM": 2}
    for task, n in classes.items():
        assert len(prompts()["classnames"][task]) == n
    for task in SUITE_TASKS.values():
        names = prompts()["classnames"][task.name]
        assert len(set(names)) == len(names) and task.paper_test_size[0] > 0
        assert all("{c}" in t for t in prompts()["templates"][task.templates_key])
        assert task.hf_expert
    assert TASKS["Food101"].hf_test_split == "validation"


def test_an_imagefolder_tree_maps_class_folders_by_name_alias_or_id(tmp_path):
    fer = tmp_path / "FER2013" / "test"
    for folder, value in [("angry", 1), ("disgust", 2), ("3", 3), ("Surprised", 4)]:
        _png(fer / folder / "a.png", value)
    split = read_task_split("FER2013", tmp_path)
    by_value = {
        int(np.asarray(Image.open(p))[0, 0, 0]): int(y) for p, y in zip(split.images, split.labels)
    }
    names = split.classnames
    assert {v: names[y] for v, y in by_value.items()} == {
        1: "angry",
        2: "disgusted",
        3: "happy",
        4: "surprised",
    }
    _png(fer / "bored" / "a.png", 5)
    with pytest.raises(
        DatasetError, match=r"FER2013: the classes \['bored'\] of .* match none of the 7 classes"
    ):
        read_task_split("FER2013", tmp_path)


def _idx(path: Path, array: np.ndarray) -> None:
    """An idx file (the MNIST family's format), uncompressed, as torchvision keeps it in raw/."""
    path.parent.mkdir(parents=True, exist_ok=True)
    code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_reads_the_mnist_family_and_emnist_letters_maps_onto_a_to_z(tmp_path):
    from adamerging.datasets.preprocessing import preprocess_images

    rng = np.random.default_rng(0)
    raw = tmp_path / "FashionMNIST" / "FashionMNIST" / "raw"
    images = rng.integers(0, 256, (5, 28, 28))
    for prefix in ("t10k", "train"):
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.array([0, 1, 9, 3, 3]))
    split = read_task_split("FashionMNIST", tmp_path)
    assert split.labels.tolist() == [0, 1, 9, 3, 3] and split.classnames[0] == "T-shirt/top"
    pixels = preprocess_images(split, 8, cache_dir=None, progress=False)
    expected = np.asarray(
        Image.fromarray(images[0].astype(np.uint8)).convert("RGB").resize((8, 8), Image.BICUBIC)
    )
    assert pixels.shape == (5, 3, 8, 8)
    assert np.array_equal(pixels[0].numpy().transpose(1, 2, 0), expected)

    raw = tmp_path / "EMNIST" / "EMNIST" / "raw"
    _idx(raw / "emnist-letters-test-images-idx3-ubyte", images[:3])
    _idx(raw / "emnist-letters-test-labels-idx1-ubyte", np.array([1, 2, 26]))  # 1-based: a..z
    split = read_task_split("EMNIST", tmp_path)
    assert [split.classnames[y] for y in split.labels] == ["A", "B", "Z"]


def test_no_tree_and_no_torchvision_files_is_one_line_naming_both(tmp_path):
    with pytest.raises(DatasetError) as e:
        read_task_split("CIFAR10", tmp_path)
    message = str(e.value)
    assert "\n" not in message and "ImageFolder tree" in message and "CIFAR10(" in message


def test_hugging_face_copies_map_fusionbench_spellings_and_splits(tmp_path):
    from fake_hf_data import write_hf_dataset

    hiragana = list("おきすつなはまやれを")
    write_hf_dataset(tmp_path / "KMNIST", hiragana, [0, 9, 3])
    split = read_task_split("KMNIST", tmp_path)
    assert [split.classnames[y] for y in split.labels] == ["o", "wo", "tsu"]
    spaced = [n.replace("_", " ") for n in prompts()["classnames"]["Food101"]][::-1]
    write_hf_dataset(tmp_path / "food101", spaced, [0, 100], split="validation")
    split = read_task_split("Food101", tmp_path)
    assert [split.classnames[y] for y in split.labels] == ["waffles", "apple_pie"]


def test_a_suite_with_missing_data_names_every_missing_task_before_loading(tmp_path):
    from model_fixtures import mini_argv

    from adamerging.commands.pipeline import check_inputs
    from adamerging.run.flags import build_parser, config_from_namespace

    write_suite_folders(tmp_path, SUITE_20[8:18])
    argv = mini_argv(_suite_root(tmp_path / "suite", "hf"), "--checkpoint-format", "hf", tasks="20")
    argv[argv.index("--data-location") + 1] = str(tmp_path)
    config = config_from_namespace(build_parser("task_arithmetic").parse_args(argv))
    with pytest.raises(DatasetError) as e:
        check_inputs(config)
    message = str(e.value)
    assert message.startswith("no data for 10 of 20 tasks: SUN397 (")
    assert all(f"{t} (" in message for t in (*PAPER_TASKS, "EMNIST", "KMNIST"))
    assert "CIFAR10 (" not in message


def test_the_download_plan_lists_all_20_tasks_with_sizes(tmp_path, capsys):
    from adamerging.datasets import download

    fetches = download.plan("ViT-B-16", list(SUITE_20), tmp_path / "c", tmp_path / "d")
    experts = [f for f in fetches if f.repo_type == "model"][1:]
    assert [f.target.parent.name for f in experts] == list(SUITE_20)
    assert experts[-1].repo_id == "tanganke/clip-vit-base-patch16_kmnist"
    food = next(f for f in fetches if f.repo_id == "ethz/food101")
    assert "*validation-*.parquet" in food.allow_patterns
    assert download.main(["--source", "hf", "--tasks", "TALL20", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "20 tasks; models to fetch: 21, ~7.6 GB" in out and "no copy  FER2013" in out
    assert (
        "(~351 MB)" in out
        and "(test split: 25250 images; and the train split)" in out
        and "--tasks TALL20" in out
    )


def _suite_root(root: Path, layout: str) -> Path:
    """20 tasks of mini checkpoints in `layout` and tiny test data: the paper's 8 in their real
    layouts, the 12 others as ImageFolder trees."""
    from fake_data import write_fake_dataset
    from fixture_cache import cached_build

    def build(root: Path) -> None:
        if layout == "hf":
            from hf_fixtures import write_random_hf_checkpoints

            write_random_hf_checkpoints(root / "checkpoints", "mini", SUITE_20)
        else:
            _tall_release(root / "checkpoints")
        for task in PAPER_TASKS:
            write_fake_dataset(task, root / "data", n_per_class=1, image_size=8)
        write_suite_folders(root / "data", SUITE_20[8:])

    cached_build(("suite", layout), root, ["checkpoints", "data"], build)
    return root


def _tall_release(folder: Path) -> None:
    """Task-vectors checkpoints, the 12 suite tasks' in TALL masks' release layout
    (<Task>Val/nonlinear_finetuned.pt, head_<Task>Val.pt, theta_0 in each task folder)."""
    import shutil

    from model_fixtures import write_random_checkpoints

    counts = {t: len(prompts()["classnames"].get(t, [0] * 3)) for t in SUITE_20}
    counts.update(Cars=196, DTD=47, SUN397=3, EuroSAT=10)
    model = write_random_checkpoints(folder, "mini", counts, heads={"DTD": False, "PCAM": False})
    for task in SUITE_20[8:]:
        (model / f"{task}Val").mkdir()
        (model / task / "finetuned.pt").rename(model / f"{task}Val" / "nonlinear_finetuned.pt")
        shutil.copy(model / "zeroshot.pt", model / f"{task}Val" / "nonlinear_zeroshot.pt")
        head = model / f"head_{task}.pt"
        if head.exists():
            head.rename(model / f"head_{task}Val.pt")
        (model / task).rmdir()
    (model / "zeroshot.pt").unlink()  # theta_0 only in the task folders, as released


@pytest.mark.parametrize("layout", ["tall", "hf"])
def test_layer_wise_adamerging_on_the_20_task_suite(tmp_path, layout):
    from model_fixtures import mini_argv

    from adamerging.commands.pipeline import run
    from adamerging.run.flags import build_parser, config_from_namespace

    root = _suite_root(tmp_path, layout)
    argv = mini_argv(root, "--steps", "1", "--batch-size-adapt", "2", tasks="20")
    if layout == "hf":
        argv += ["--checkpoint-format", "hf"]
    config = config_from_namespace(build_parser("layer_wise_adamerging").parse_args(argv))
    result = run("layer_wise_adamerging", config)
    assert list(result["accuracy"]) == list(SUITE_20)
    assert result["tasks"] == list(SUITE_20)
    assert len(result["coefficients"]["columns"]) == 21
    assert result["test_data"]["CIFAR100"]["n_images"] == 2
    from adamerging.commands.report import main as report

    report(["--model", "mini", "--results-dir", str(root / "results")])
    header = (root / "results" / "mini" / "table.md").read_text().split("| method |")[1]
    assert header.split("\n")[0].split(" | ")[:20] == [f" {SUITE_20[0]}", *SUITE_20[1:]]
    if layout == "tall":  # the coefficient analysis reuses the run and plots 20 columns
        from adamerging.commands.experiments import run as experiment

        coefficients = experiment(["coefficients", *argv, "--skip-existing"])
        assert list(coefficients["depth"]["per_task"]) == list(SUITE_20)


def test_load_checks_name_a_digits_emnist_head_and_a_duplicated_expert(tmp_path, capsys):
    import shutil

    import torch
    from model_fixtures import mini_argv

    from adamerging.commands.pipeline import main
    from adamerging.models.clip import create_clip
    from adamerging.models.task_vectors_format import save_classification_head

    root = _suite_root(tmp_path, "tall")
    model = root / "checkpoints" / "mini"
    head = model / "head_EMNISTVal.pt"
    width = create_clip("mini").visual.output_dim
    save_classification_head(torch.randn(10, width), head)
    argv = mini_argv(root, "--steps", "1", tasks="20")
    with pytest.raises(SystemExit):
        main("task_arithmetic", argv)
    err = capsys.readouterr().err
    assert "head has 10 classes" in err and "digits split" in err
    save_classification_head(torch.randn(26, width), head)
    expert = model / "KMNISTVal" / "nonlinear_finetuned.pt"
    shutil.copy(model / "CIFAR10Val" / "nonlinear_finetuned.pt", expert)
    with pytest.raises(SystemExit):
        main("task_arithmetic", argv)
    assert "CIFAR10 and KMNIST load the same expert" in capsys.readouterr().err


def test_paper_rows_are_8_task_and_a_suite_gets_the_reported_averages():
    from adamerging.commands.experiments.common import FUSIONBENCH, comparison
    from adamerging.reporting.paper import paper_row

    assert paper_row("ViT-B-32", "Task Arithmetic", SUITES["8"])["Avg"] == 69.1
    assert paper_row("ViT-B-32", "Task Arithmetic", SUITES["8"][:6]) is not None  # Table 4
    assert paper_row("ViT-B-32", "Task Arithmetic", [*SUITES["8"], "CIFAR10"]) is None
    assert paper_row("ViT-B-32", "CART", SUITE_20) is None
    assert paper_row("ViT-L-14", "Ties-Merging", SUITES["14"]) == {"Avg": 79.5, "Norm.": 84.1}
    ours = {"Task Arithmetic": {t: 50.0 for t in SUITE_20}}
    rows, _ = comparison("ViT-B-32", ours, SUITE_20)
    assert rows["Task Arithmetic (paper)"]["Avg"] == 60.5
    assert rows["Task Arithmetic (ours - paper)"]["Avg"] == pytest.approx(50.0 - 60.5)
    rows, _ = comparison("ViT-B-32", ours, SUITE_20, FUSIONBENCH)
    assert list(rows) == ["Task Arithmetic"]  # FusionBench publishes 8-task averages only


def test_an_expert_for_a_task_outside_the_suite_is_named(tmp_path, mini):
    from model_fixtures import mini_argv

    from adamerging.commands.pipeline import check_flags
    from adamerging.methods.registry import method
    from adamerging.run.flags import build_parser, config_from_namespace

    argv = [*mini_argv(mini, tasks="14"), "--finetuned", f"CIFAR10={tmp_path / 'x.pt'}"]
    config = config_from_namespace(build_parser("task_arithmetic").parse_args(argv))
    with pytest.raises(ValueError, match=r"name CIFAR10, which the run does not merge"):
        check_flags(method("task_arithmetic"), config)


def test_fer2013_files_torchvision_cannot_check_are_one_line_naming_kaggle(tmp_path):
    folder = tmp_path / "FER2013" / "fer2013"
    folder.mkdir(parents=True)
    pixels = " ".join(["0"] * 48 * 48)
    (folder / "fer2013.csv").write_text(f"emotion,pixels,Usage\n3,{pixels},PublicTest\n")
    with pytest.raises(DatasetError) as e:  # torchvision checks the csv's md5
        read_task_split("FER2013", tmp_path)
    message = str(e.value)
    assert "\n" not in message and "FER2013(" in message and "Kaggle's fer2013.csv" in message


def test_every_missing_expert_is_named_in_one_line(tmp_path):
    from adamerging.run.config import RunConfig
    from adamerging.run.experts import expert_paths

    config = RunConfig(model="ViT-B-32", checkpoints=str(tmp_path), tasks="14")
    with pytest.raises(FileNotFoundError) as e:
        expert_paths(config, list(SUITES["14"]))
    message = str(e.value)
    assert message.startswith("fine-tuned encoders not found for 14 of 14 tasks: SUN397 (")
    assert "FER2013 (" in message and "nonlinear_finetuned.pt" in message


def test_report_leaves_out_results_of_another_task_set(tmp_path, capsys):
    import json

    from adamerging.commands.report import main as report

    folder = tmp_path / "mini"
    folder.mkdir()
    for name, tasks in [("task_arithmetic", ["MNIST", "SVHN"]), ("ties_merging", SUITE_20)]:
        result = {"tasks": list(tasks), "accuracy": {t: 50.0 for t in tasks}, "test_data": {}}
        (folder / f"{name}.json").write_text(json.dumps(result))
    report(["--model", "mini", "--results-dir", str(tmp_path)])
    table = (folder / "table.md").read_text()
    assert "| method | MNIST | SVHN | Avg |" in table and "Ties-Merging |" not in table
    assert "**Left out** (other tasks than these 2): ties_merging.json (20 tasks)" in table


def test_a_head_that_cannot_be_built_is_named_before_any_checkpoint_loads(tmp_path):
    from model_fixtures import mini_argv

    from adamerging.commands.pipeline import check_inputs
    from adamerging.run.flags import build_parser, config_from_namespace

    root = _suite_root(tmp_path, "tall")
    model = root / "checkpoints" / "mini"
    (model / "head_CIFAR10Val.pt").unlink()
    (model / "clip_pretrained.safetensors").unlink()
    argv = mini_argv(root, tasks="20")
    config = config_from_namespace(build_parser("task_arithmetic").parse_args(argv))
    with pytest.raises(FileNotFoundError, match=r"no head for \['DTD', 'PCAM', 'CIFAR10'\]"):
        check_inputs(config)
