"""The 12 tasks TALL masks' 14- and 20-task suites add to the paper's 8 (Wang et al., ICML 2024;
FusionBench's TALL14 / TALL20), as task records: read from an ImageFolder tree or by torchvision's
own dataset class (`suite_readers.py`), their class names and prompts in
`data/zeroshot_prompts.json`, their test-set sizes those TALL masks' and FusionBench's published
accuracies are fractions of, and FusionBench's dataset and expert repos."""

from __future__ import annotations

from typing import Any

from adamerging.datasets.classnames import FixedNames
from adamerging.datasets.suite_readers import SuiteReader, Torchvision
from adamerging.datasets.task_record import Task


def suite_task(
    name: str,
    folder: str,
    tv: Torchvision,
    size: int,
    hf: tuple[str | None, str],
    prompts: str | None = None,
    aliases: tuple[tuple[str, str], ...] = (),
    hf_test_split: str = "test",
    variants: tuple[tuple[int, str], ...] = (),
) -> Task:
    """A task of the 14- and 20-task suites (TALL masks; `suite_readers.py`): fixed class names
    (with `aliases`, other spellings its copies use), read as an ImageFolder tree or by
    torchvision's class `tv`; `size` test images; `hf`: (FusionBench's dataset repo, expert
    suffix)."""
    return Task(
        name,
        folder,
        SuiteReader(name, folder, tv),
        FixedNames(aliases),
        paper_test_size=(size, size),
        hf_dataset=(hf[0], None) if hf[0] else None,
        hf_expert=hf[1],
        prompts=prompts,
        hf_test_split=hf_test_split,
        labels_by_name=True,
        variants=variants,
        downloads=tv.how(),
    )


def _splits(key: str, test: Any, train: Any) -> dict[str, Any]:
    return {"test": ((key, test),), "train": ((key, train),)}


_TRAIN = _splits("train", False, True)
_SPLIT = _splits("split", "test", "train")
# FER2013: torchvision's label ids follow the Kaggle csv; the registry's order is FusionBench's
_FER_CSV = ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral")
_FER_FOLDERS = (("disgust", "disgusted"), ("fear", "fearful"), ("surprise", "surprised"))
_KMNIST_ROMAJI = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
_KMNIST_HIRAGANA = tuple(zip("おきすつなはまやれを", _KMNIST_ROMAJI))
_FLOWERS = (
    ("globe-flower", "globe flower"),
    ("pink-yellow dahlia?", "pink and yellow dahlia"),
    ("ball moss", "air plant"),
)

SUITE_TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        suite_task(
            "STL10",
            "stl10",
            Torchvision("STL10", "stl10", "stl10/stl10_binary", **_SPLIT),
            8000,
            ("tanganke/stl10", "stl10"),
        ),
        suite_task(
            "OxfordIIITPet",
            "OxfordIIITPet",
            Torchvision(
                "OxfordIIITPet",
                "OxfordIIITPet",
                "OxfordIIITPet/oxford-iiit-pet",
                **_splits("split", "test", "trainval"),
            ),
            3669,
            ("timm/oxford-iiit-pet", "oxford-iiit-pet"),
        ),
        suite_task(
            "Flowers102",
            "flowers102",
            Torchvision("Flowers102", "flowers102", "flowers102/flowers-102", **_SPLIT, ids=True),
            6149,
            ("dpdl-benchmark/oxford_flowers102", "oxford_flowers102"),
            aliases=_FLOWERS,
        ),
        suite_task(
            "CIFAR100",
            "cifar100",
            Torchvision("CIFAR100", "", "cifar-100-python", **_TRAIN),
            10000,
            ("tanganke/cifar100", "cifar100"),
            prompts="cifar",
            aliases=(("cra", "crab"),),
        ),
        suite_task(
            "PCAM",
            "PCAM",
            Torchvision("PCAM", "PCAM", "PCAM/pcam", **_SPLIT),
            32768,
            ("1aurent/PatchCamelyon", "pcam"),
        ),
        suite_task(
            "FER2013",
            "FER2013",
            Torchvision(
                "FER2013",
                "FER2013",
                "FER2013/fer2013",
                **_SPLIT,
                label_names=_FER_CSV,
                fetch=(
                    "torchvision cannot download FER2013: put Kaggle's fer2013.csv (or"
                    " icml_face_data.csv, 'Challenges in Representation Learning: Facial Expression"
                    " Recognition') in <data>/FER2013/fer2013/, or Kaggle's image folders as"
                    " <data>/FER2013/{test,train}/<emotion>/"
                ),
            ),
            7178,
            (None, "fer2013"),  # FusionBench's copy, clip-benchmark/wds_fer2013, is a webdataset
            aliases=_FER_FOLDERS,
        ),
        suite_task(
            "CIFAR10",
            "cifar10",
            Torchvision("CIFAR10", "", "cifar-10-batches-py", **_TRAIN),
            10000,
            ("tanganke/cifar10", "cifar10"),
            prompts="cifar",
        ),
        suite_task(
            "Food101",
            "food101",
            Torchvision("Food101", "food101", "food101/food-101", **_SPLIT),
            25250,
            ("ethz/food101", "food101"),
            hf_test_split="validation",
        ),
        suite_task(
            "FashionMNIST",
            "FashionMNIST",
            Torchvision("FashionMNIST", "FashionMNIST", "FashionMNIST/FashionMNIST/raw", **_TRAIN),
            10000,
            ("zalando-datasets/fashion_mnist", "fashion_mnist"),
            aliases=(("T - shirt / top", "T-shirt/top"),),
        ),
        suite_task(
            "RenderedSST2",
            "RenderedSST2",
            Torchvision("RenderedSST2", "RenderedSST2", "RenderedSST2/rendered-sst2", **_SPLIT),
            1821,
            ("nateraw/rendered-sst2", "rendered-sst2"),
        ),
        suite_task(
            "EMNIST",
            "EMNIST",
            Torchvision(
                "EMNIST",
                "EMNIST",
                "EMNIST/EMNIST/raw",
                test=(("split", "letters"), ("train", False)),
                train=(("split", "letters"), ("train", True)),
            ),
            20800,
            ("tanganke/emnist_letters", "emnist_letters"),
            variants=(
                (
                    10,
                    "TALL masks' EMNIST is the digits split, 10 classes; this suite's is the"
                    " letters split, 26, as FusionBench's",
                ),
            ),
        ),
        suite_task(
            "KMNIST",
            "KMNIST",
            Torchvision("KMNIST", "KMNIST", "KMNIST/KMNIST/raw", **_TRAIN),
            10000,
            ("tanganke/kmnist", "kmnist"),
            aliases=_KMNIST_HIRAGANA,
        ),
    ]
}
