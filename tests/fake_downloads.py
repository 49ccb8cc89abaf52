"""Tiny fake copies of what each dataset's official source hands out (archives, lists, .mat / idx
files).

`write_fake_downloads(task, downloads, scratch)` first writes a fake dataset in the reader layout
with tests/fake_data.py under `scratch` (whose recorded expectations a prepared copy must match),
then repacks it into the official download form in `downloads`: SUN397.tar.gz + Partitions.zip,
the Cars devkit / image tarballs (or the Kaggle folders), NWPU-RESISC45.zip + split lists,
EuroSAT.zip (`2750/<Class>/`), SVHN .mat, the GTSRB test / GT / training zips, gzipped MNIST idx
files, dtd-r1.0.1.tar.gz with `labels/{train1,val1,test1}.txt`.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import zipfile
from pathlib import Path

from fake_data import write_fake_dataset


def _tar(path: Path, members: dict[str, Path]) -> None:
    """A .tar.gz / .tgz holding each `arcname: source` (folders recursively)."""
    with tarfile.open(path, "w:gz") as t:
        for arcname, src in members.items():
            t.add(src, arcname=arcname)


def _zip(path: Path, members: dict[str, Path]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for arcname, src in members.items():
            files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
            for f in files:
                z.write(
                    f, arcname if src.is_file() else f"{arcname}/{f.relative_to(src).as_posix()}"
                )


def _sun397(downloads: Path, base: Path) -> None:
    images = base.parent / "SUN397_official"
    lists: dict[str, list[str]] = {}
    for split, list_name in (("train", "Training_01.txt"), ("val", "Testing_01.txt")):
        lines = []
        for cls_dir in sorted((base / split).iterdir()):
            rel = f"{cls_dir.name[0]}/{cls_dir.name[2:]}"  # a_airplane_cabin -> a/airplane_cabin
            for f in sorted(cls_dir.iterdir()):
                name = f"{split}_{f.name}"
                dst = images / rel / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dst)
                lines.append(f"/{rel}/{name}")
        lists[list_name] = lines
    (images / "a" / "abbey" / "in_no_partition.jpg").write_bytes(
        (images / lines[0].lstrip("/")).read_bytes()
    )
    part = base.parent / "Partitions"
    part.mkdir()
    for name, lines in lists.items():
        (part / name).write_text("\n".join(lines) + "\n")
    _tar(downloads / "SUN397.tar.gz", {"SUN397": images})
    _zip(downloads / "Partitions.zip", {"Partitions": part})


def _cars(downloads: Path, base: Path, kaggle: bool) -> None:
    if kaggle:  # Kaggle's folders, already extracted: doubled image folders, car_devkit/devkit
        for split in ("cars_test", "cars_train"):
            shutil.copytree(base / split, downloads / split / split)
        shutil.copytree(base / "devkit", downloads / "car_devkit" / "devkit")
    else:
        _tar(downloads / "car_devkit.tgz", {"devkit": base / "devkit"})
        _tar(downloads / "cars_test.tgz", {"cars_test": base / "cars_test"})
        _tar(downloads / "cars_train.tgz", {"cars_train": base / "cars_train"})
    shutil.copy(
        base / "cars_test_annos_withlabels.mat", downloads / "cars_test_annos_withlabels.mat"
    )


def _dtd(downloads: Path, base: Path) -> None:
    images = base.parent / "dtd_official"
    lists: dict[str, list[str]] = {"train1.txt": [], "val1.txt": [], "test1.txt": []}
    for split in ("train", "val"):
        for cls_dir in sorted((base / split).iterdir()):
            for k, f in enumerate(sorted(cls_dir.iterdir())):
                name = f"{cls_dir.name}_{split}_{f.name}"
                (images / "images" / cls_dir.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, images / "images" / cls_dir.name / name)
                which = "test1.txt" if split == "val" else ("val1.txt" if k == 0 else "train1.txt")
                lists[which].append(f"{cls_dir.name}/{name}")
    (images / "labels").mkdir()
    for name, lines in lists.items():
        (images / "labels" / name).write_text("\n".join(lines) + "\n")
    # other splits: ignored
    (images / "labels" / "test2.txt").write_text("\n".join(lists["train1.txt"]) + "\n")
    _tar(downloads / "dtd-r1.0.1.tar.gz", {"dtd": images})


def _eurosat(downloads: Path, scratch: Path, n_per_class: int) -> dict[str, int]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    src = scratch / "EuroSAT_official"
    counts = {"AnnualCrop": n_per_class, "Forest": n_per_class + 3}
    for cls, n in counts.items():
        (src / cls).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                src / cls / f"{cls}_{k + 1}.jpg"
            )
    _zip(downloads / "EuroSAT.zip", {"2750": src})
    return counts


def _gtsrb(downloads: Path, base: Path) -> None:
    # the test archive's own csv: no ClassId column
    test_csv = base.parent / "GT-final_test.test.csv"
    test_csv.write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2\n")
    _zip(
        downloads / "GTSRB_Final_Test_Images.zip",
        {
            "GTSRB/Final_Test/Images": base / "GTSRB" / "Final_Test" / "Images",
            "GTSRB/Final_Test/Images/GT-final_test.test.csv": test_csv,
        },
    )
    _zip(downloads / "GTSRB_Final_Test_GT.zip", {"GT-final_test.csv": base / "GT-final_test.csv"})
    _zip(
        downloads / "GTSRB_Final_Training_Images.zip",
        {"GTSRB/Final_Training/Images": base / "GTSRB" / "Training"},
    )


def _mnist(downloads: Path, base: Path) -> None:
    for f in sorted((base / "raw").iterdir()):
        with open(f, "rb") as src, gzip.open(downloads / f"{f.name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)


def write_fake_downloads(
    task: str, downloads: Path, scratch: Path, *, kaggle: bool = False, n_per_class: int = 2
) -> dict:
    """Write `task`'s official downloads into `downloads`; returns what a prepared copy must hold.

    For every task but EuroSAT: {"root": the reference root to compare with (tests/fake_data.py
    expectations in its reader layout)}; for EuroSAT (a random split of the archive): {"counts":
    images per class in the archive}.
    """
    downloads.mkdir(parents=True, exist_ok=True)
    if task == "EuroSAT":
        return {"counts": _eurosat(downloads, scratch, max(10, n_per_class))}
    classes = {
        "RESISC45": None,
        "GTSRB": None,
        "MNIST": None,
        "SVHN": None,
        "Cars": 3,
        "SUN397": 3,
        "DTD": 3,
    }[task]
    base = write_fake_dataset(
        task,
        scratch,
        n_per_class=n_per_class + (1 if task == "DTD" else 0),
        num_classes=classes,
        split="both",
    )
    if task == "SUN397":
        _sun397(downloads, base)
    elif task == "Cars":
        _cars(downloads, base, kaggle)
    elif task == "RESISC45":
        _zip(downloads / "NWPU-RESISC45.zip", {"NWPU-RESISC45": base / "NWPU-RESISC45"})
        for split in ("train", "test"):
            shutil.copy(base / f"resisc45-{split}.txt", downloads / f"resisc45-{split}.txt")
    elif task == "SVHN":
        for split in ("test", "train"):
            shutil.copy(base / f"{split}_32x32.mat", downloads / f"{split}_32x32.mat")
    elif task == "GTSRB":
        _gtsrb(downloads, base)
    elif task == "MNIST":
        _mnist(downloads, base)
    elif task == "DTD":
        _dtd(downloads, base)
    return {"root": scratch}
