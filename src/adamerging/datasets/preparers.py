"""The per-task recipes of `python -m adamerging prepare` (datasets/prepare.py): official downloads
-> the reader layouts, with the standard splits.

Each recipe is `(Inputs, the task's folder being built) -> None` (the task registry names it). Files
from folders you give are hard-linked where possible (else copied), never moved; archives are
unpacked with `shutil.unpack_archive` (zip, tar, tar.gz). Split definitions and where they come
from (each recipe's docstring has the details):
- SUN397: the official partition 1 (`Training_01.txt`, `Testing_01.txt` of Partitions.zip,
  vision.princeton.edu/projects/2010/SUN), train -> `train/`, test -> `val/`, class folder
  `/a/abbey` -> `a_abbey` (task-vectors issue #1, github.com/mlfoundations/task_vectors/issues/1).
- Cars: the devkit + `cars_test_annos_withlabels.mat` (ai.stanford.edu/~jkrause/cars), images as
  extracted (the Kaggle copy's doubled `cars_test/cars_test/` nesting is undone).
- RESISC45: NWPU-RESISC45 with the split lists `resisc45-{train,val,test}.txt` of "In-domain
  representation learning for remote sensing" (Neumann et al. 2019,
  github.com/google-research/google-research/tree/master/remote_sensing_representations), the
  lists task-vectors' reader expects.
- EuroSAT: the RGB archive (github.com/phelber/EuroSAT). task-vectors split it at random into
  21,600 / 2,700 / 2,700 (issue #1) and did not publish the lists; we draw a seeded per-class
  80 / 10 / 10 split with the same sizes (2,700 test images). EuroSAT numbers depend on the split.
- SVHN: `{train,test}_32x32.mat` as is (ufldl.stanford.edu/housenumbers).
- GTSRB: the official final test set `GTSRB_Final_Test_Images.zip` + `GT-final_test.csv` of
  `GTSRB_Final_Test_GT.zip` (benchmark.ini.rub.de), training images optional; torchvision's layout.
- MNIST: the four idx files (yann.lecun.com/exdb/mnist), `.gz` kept as is.
- DTD: `dtd-r1.0.1.tar.gz` (robots.ox.ac.uk/~vgg/data/dtd); split 1 as in task-vectors issue #1
  (after PAINT): `train1` + `val1` -> `train/`, `test1` -> `val/`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path


class PrepareError(Exception):
    """A download is missing or not in the official form (the message names the file and what was
    expected)."""


class Inputs:
    """The `--downloads` folder of one task; archives are unpacked into `staging` on first use.
    `wanted`: what to download (the task registry's `downloads`), for the messages."""

    def __init__(self, task: str, downloads: Path, staging: Path, wanted: str = "") -> None:
        self.task, self.downloads, self.staging, self.wanted = task, downloads, staging, wanted
        self._unpacked: set[Path] = set()

    def _roots(self) -> list[Path]:
        return [self.downloads, self.staging]

    def _search(self, name: str, want_dir: bool) -> Path | None:
        for root in self._roots():
            hits = sorted(p for p in root.rglob(name) if (p.is_dir() if want_dir else p.is_file()))
            if hits:
                return min(hits, key=lambda p: len(p.parts))  # the shallowest copy
        return None

    def unpack(self, *archives: str) -> None:
        """Unpack every listed archive found (by file name) into the staging folder, once."""
        for name in archives:
            path = self._search(name, want_dir=False)
            if path is None or path in self._unpacked:
                continue
            target = self.staging / path.name.split(".")[0]
            try:
                # filter="data" (tar only): no members outside `target`, no devices or links out.
                is_zip = path.suffix.lower() == ".zip"
                shutil.unpack_archive(
                    str(path), str(target), **({} if is_zip else {"filter": "data"})
                )
            except (shutil.ReadError, ValueError, OSError) as e:
                raise PrepareError(
                    f"{self.task}: cannot unpack {path} ({e}); expected {self.wanted}"
                ) from e
            self._unpacked.add(path)

    def find(self, *names: str) -> Path | None:
        """The first of `names` found as a file under the downloads (or unpacked archives), else
        None."""
        for name in names:
            path = self._search(name, want_dir=False)
            if path is not None:
                return path
        return None

    def file(self, *names: str) -> Path:
        """As `find`, but a missing file is a PrepareError naming the first of `names`."""
        path = self.find(*names)
        if path is None:
            raise self.missing(names[0])
        return path

    def folder(self, name: str, *, containing: str | None = None) -> Path:
        """A folder named `name` (the shallowest; with `containing`, one holding that entry).

        A folder that only holds a folder of the same name (Kaggle's `cars_test/cars_test/`) is
        descended into.
        """
        for root in self._roots():
            hits = sorted((p for p in root.rglob(name) if p.is_dir()), key=lambda p: len(p.parts))
            for hit in hits:
                while [e.name for e in hit.iterdir()] == [name] and (hit / name).is_dir():
                    hit = hit / name
                if containing is None or (hit / containing).exists():
                    return hit
        raise self.missing(f"{name}/" + (f" holding {containing}" if containing else ""))

    def missing(self, what: str) -> PrepareError:
        found = (
            sorted(p.name for p in self.downloads.iterdir())[:12] if self.downloads.is_dir() else []
        )
        return PrepareError(
            f"{self.task}: expected {what} in {self.downloads} (downloads: {self.wanted});"
            f" found {found}"
        )


def _place(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (same file system), else copy: the user's downloads stay
    untouched."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _place_listed(
    task: str, images_dir: Path, names: list[str], out_dir: Path, rename: Callable[[str], str]
) -> None:
    """Place each listed image `images_dir/<name>` at `out_dir/<rename(name)>`; all must exist."""
    missing = [n for n in names if not (images_dir / n).is_file()]
    if missing:
        raise PrepareError(
            f"{task}: {len(missing)} listed images are not in {images_dir}, e.g. {missing[:3]}"
        )
    for n in names:
        _place(images_dir / n, out_dir / rename(n))


def _list_lines(path: Path) -> list[str]:
    return [
        line.strip().lstrip("/")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def prepare_sun397(inp: Inputs, out: Path) -> None:
    """SUN397 partition 1: `Training_01.txt` -> `train/`, `Testing_01.txt` -> `val/` (19,850 test
    images).

    Lines are like `/a/abbey/sun_xxx.jpg` or `/b/bow_window/indoor/sun_xxx.jpg`; the class folder is
    the path's folders joined by `_` (`a_abbey`, `b_bow_window_indoor`), as the task-vectors reader
    expects (class name = folder minus its 2-character prefix). Sources: Xiao et al., SUN database
    (vision.princeton.edu/projects/2010/SUN/, Partitions.zip); task-vectors issue #1 for the
    archive.
    """
    inp.unpack("SUN397.tar.gz", "SUN397.tar", "Partitions.zip")
    images = inp.folder("SUN397", containing="a")
    for list_name, split in (("Training_01.txt", "train"), ("Testing_01.txt", "val")):
        names = _list_lines(inp.file(list_name))
        _place_listed(
            "SUN397",
            images,
            names,
            out / split,
            lambda n: f"{'_'.join(n.split('/')[:-1])}/{n.split('/')[-1]}",
        )


def prepare_cars(inp: Inputs, out: Path) -> None:
    """Stanford Cars: `devkit/*.mat`, `cars_test_annos_withlabels.mat`, `cars_{train,test}/` (8,041
    test images).

    Source: Krause et al. 2013 (ai.stanford.edu/~jkrause/cars/car_dataset.html); the labelled test
    annotations were published separately (cars_test_annos_withlabels.mat). Kaggle's copy nests the
    image folders twice (`cars_test/cars_test/`) and the devkit as `car_devkit/devkit/`: both found.
    """
    inp.unpack(
        "car_devkit.tgz",
        "cars_train.tgz",
        "cars_test.tgz",
        "archive.zip",
        "stanford-cars-dataset.zip",
    )
    devkit = inp.folder("devkit", containing="cars_meta.mat")
    for name in ("cars_meta.mat", "cars_train_annos.mat", "cars_test_annos.mat"):
        if (devkit / name).is_file():
            _place(devkit / name, out / "devkit" / name)
    _place(inp.file("cars_test_annos_withlabels.mat"), out / "cars_test_annos_withlabels.mat")
    for split in ("test", "train"):
        try:
            src = inp.folder(f"cars_{split}")
        except PrepareError:
            if split == "test":
                raise
            continue  # training images are optional (only the test split is evaluated)
        for f in sorted(src.iterdir()):
            if f.is_file() and f.suffix.lower() == ".jpg":
                _place(f, out / f"cars_{split}" / f.name)


def prepare_resisc45(inp: Inputs, out: Path) -> None:
    """RESISC45: `NWPU-RESISC45/<class>/*.jpg` + `resisc45-{train,val,test}.txt` (6,300 test
    images).

    Source: Cheng et al. 2017 (the images; the official archive is a .rar: extract it first, e.g.
    `unrar x NWPU-RESISC45.rar`); split lists of Neumann et al. 2019
    (remote_sensing_representations,
    storage.googleapis.com/remote_sensing_representations/resisc45-{train,val,test}.txt).
    """
    inp.unpack("NWPU-RESISC45.zip", "NWPU-RESISC45.tar", "NWPU-RESISC45.tar.gz")
    images = inp.folder("NWPU-RESISC45", containing="airplane")
    listed: set[str] = set()
    for split in ("train", "val", "test"):
        path = (
            inp.file(f"resisc45-{split}.txt")
            if split == "test"
            else inp.find(f"resisc45-{split}.txt")
        )
        if path is None:
            continue
        _place(path, out / path.name)
        listed.update(_list_lines(path))
    for cls in sorted(p.name for p in images.iterdir() if p.is_dir()):
        for f in sorted((images / cls).iterdir()):
            if f.name in listed:
                _place(f, out / "NWPU-RESISC45" / cls / f.name)
    missing = sorted(listed - {p.name for p in (out / "NWPU-RESISC45").rglob("*")})
    if missing:
        raise PrepareError(
            f"RESISC45: the split lists name {len(missing)} images not in {images}, e.g."
            f" {missing[:3]}"
        )


def eurosat_split(
    files_per_class: dict[str, list[str]], seed: int = 0
) -> dict[str, dict[str, list[str]]]:
    """Seeded per-class split: 10 % test, 10 % val, the rest train (of 27,000: 21,600 / 2,700 /
    2,700).

    task-vectors issue #1: "we randomly split the downloaded data into train/validation/test
    (21,600/2,700/2,700 samples)"; the lists were not published, so this split has their sizes, not
    their members. Returns {split: {class: sorted file names}}.
    """
    out: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}, "test": {}}
    for cls, files in sorted(files_per_class.items()):
        order = sorted(files)
        # per-class seed: independent of the other classes
        random.Random(f"{seed}-{cls}").shuffle(order)
        k = len(order) // 10
        out["test"][cls], out["val"][cls], out["train"][cls] = (
            sorted(order[:k]),
            sorted(order[k : 2 * k]),
            sorted(order[2 * k :]),
        )
    return out


def prepare_eurosat(inp: Inputs, out: Path) -> None:
    """EuroSAT RGB -> `EuroSAT_splits/{train,val,test}/<Class>/` with `eurosat_split` (2,700 test
    images).

    Source: Helber et al. 2019 (github.com/phelber/EuroSAT; EuroSAT.zip holds `2750/<Class>/`,
    EuroSAT_RGB.zip `EuroSAT_RGB/<Class>/`); split sizes from task-vectors issue #1.
    """
    inp.unpack("EuroSAT.zip", "EuroSAT_RGB.zip")
    images = inp.folder("AnnualCrop").parent
    classes = {
        p.name: [
            f.name for f in p.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif")
        ]
        for p in sorted(images.iterdir())
        if p.is_dir()
    }
    for split, per_class in eurosat_split(classes).items():
        for cls, names in per_class.items():
            for n in names:
                _place(images / cls / n, out / split / cls / n)


def prepare_svhn(inp: Inputs, out: Path) -> None:
    """SVHN: `{train,test}_32x32.mat` copied as is (26,032 test images). Source: Netzer et al.
    2011."""
    _place(inp.file("test_32x32.mat"), out / "test_32x32.mat")
    train = inp.find("train_32x32.mat")
    if train is not None:
        _place(train, out / "train_32x32.mat")


def prepare_gtsrb(inp: Inputs, out: Path) -> None:
    """GTSRB final test set: `GTSRB/Final_Test/Images/*.ppm` + `GT-final_test.csv` (12,630 test
    images).

    Source: Stallkamp et al. 2012 (benchmark.ini.rub.de; the test archive's own csv has no ClassId,
    the labels come in GTSRB_Final_Test_GT.zip). Training images, if given, go to torchvision's
    `GTSRB/Training/000CC/` (from the archive's `Final_Training/Images/000CC/`).
    """
    inp.unpack(
        "GTSRB_Final_Test_Images.zip", "GTSRB_Final_Test_GT.zip", "GTSRB_Final_Training_Images.zip"
    )
    test_images = inp.folder("Images", containing="00000.ppm")
    for f in sorted(test_images.iterdir()):
        if f.suffix.lower() == ".ppm":
            _place(f, out / "GTSRB" / "Final_Test" / "Images" / f.name)
    _place(inp.file("GT-final_test.csv"), out / "GT-final_test.csv")
    with contextlib.suppress(PrepareError):
        train = inp.folder("Final_Training").joinpath("Images")
        for cls in sorted(p for p in train.iterdir() if p.is_dir()):
            for f in sorted(cls.iterdir()):
                _place(f, out / "GTSRB" / "Training" / cls.name / f.name)


def prepare_mnist(inp: Inputs, out: Path) -> None:
    """MNIST: the idx files into torchvision's `MNIST/raw/` (10,000 test images). Source: LeCun et
    al. 1998."""
    for prefix in ("t10k", "train"):
        for kind in ("images-idx3", "labels-idx1"):
            stem = f"{prefix}-{kind}-ubyte"
            # train: optional
            found = (
                inp.find(f"{stem}.gz", stem) if prefix == "train" else inp.file(f"{stem}.gz", stem)
            )
            if found is not None:
                _place(found, out / "raw" / found.name)


def prepare_dtd(inp: Inputs, out: Path) -> None:
    """DTD split 1: `train1` + `val1` -> `train/`, `test1` -> `val/` (1,880 test images).

    Source: Cimpoi et al. 2014 (robots.ox.ac.uk/~vgg/data/dtd, dtd-r1.0.1.tar.gz with `labels/`);
    the merge follows task-vectors issue #1 ("as in PAINT, we use their test set unchanged").
    """
    inp.unpack("dtd-r1.0.1.tar.gz", "dtd-r1.0.1.tar")
    root = inp.folder("dtd", containing="labels")
    for list_names, split in ((("train1.txt", "val1.txt"), "train"), (("test1.txt",), "val")):
        for list_name in list_names:
            path = root / "labels" / list_name
            if not path.is_file():
                raise inp.missing(f"dtd/labels/{list_name}")
            _place_listed("DTD", root / "images", _list_lines(path), out / split, lambda n: n)
