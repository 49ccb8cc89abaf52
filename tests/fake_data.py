"""Tiny fake copies of the 8 benchmark datasets, written in their real on-disk layouts.

`write_fake_dataset` writes random images (default 8x8) in the real file formats (jpg folders, ppm +
csv for GTSRB, idx for MNIST, .mat for SVHN / Cars) and records what a correct reader must return
(labels in reading order, class names, file names) in `<root>/.fake_expected/<Task>_<split>.json`;
`read_expected` gives it back. The expectations are written from what the writer put on disk, not
from the reader's code, so they check the reader's label conventions (Cars 1-based, SVHN 10 -> 0).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TASKS = ("SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD")
LAYOUTS = ("task_vectors", "fork")

_PROMPTS = (
    Path(__file__).resolve().parents[1] / "src" / "adamerging" / "data" / "zeroshot_prompts.json"
)

# Real-looking SUN397 class folders (prefix letter + `_` + scene, `_` inside the scene name).
_SUN397_FOLDERS = [
    "a_abbey",
    "a_airplane_cabin",
    "b_bedroom",
    "c_campsite",
    "d_dining_room",
    "h_highway",
    "k_kitchen",
    "o_office",
    "s_skyscraper",
    "w_waterfall_block",
]
_DTD_CLASSES = (
    "banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline"
    " dotted fibrous flecked freckled frilly gauzy grid grooved honeycombed interlaced knitted"
    " lacelike lined marbled matted meshed paisley perforated pitted pleated polka-dotted porous"
    " potholed scaly smeared spiralled sprinkled stained stratified striped studded swirly veined"
    " waffled woven wrinkled zigzagged"
).split()
_FULL_COUNTS = {
    "SUN397": 3,
    "Cars": 196,
    "RESISC45": 45,
    "EuroSAT": 10,
    "SVHN": 10,
    "GTSRB": 43,
    "MNIST": 10,
    "DTD": 47,
}
_TASK_DIRS = {
    "SUN397": "sun397",
    "Cars": "stanford_cars",
    "RESISC45": "resisc45",
    "EuroSAT": "EuroSAT_splits",
    "SVHN": "svhn",
    "GTSRB": "gtsrb",
    "MNIST": "MNIST",
    "DTD": "dtd",
}


def _prompts() -> dict[str, Any]:
    return json.loads(_PROMPTS.read_text(encoding="utf-8"))


def _canonical(task: str) -> str:
    for t in TASKS:
        if t.lower() == task.lower():
            return t
    raise ValueError(f"unknown task {task!r}")


def _image(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _balanced_labels(rng: np.random.Generator, num_classes: int, n_per_class: int) -> np.ndarray:
    """n_per_class of each class, shuffled (so readers cannot get labels right by accident)."""
    labels = np.repeat(np.arange(num_classes), n_per_class)
    rng.shuffle(labels)
    return labels


def _folder_split(
    folder: Path,
    class_folders: list[str],
    n_per_class: int,
    size: int,
    rng: np.random.Generator,
    ext: str = ".jpg",
) -> tuple[list[int], list[str]]:
    """An ImageFolder tree; returns labels / file names in ImageFolder order (sorted folders, sorted
    files)."""
    labels, files = [], []
    for idx, cls in enumerate(sorted(class_folders)):
        for k in range(n_per_class):
            name = f"img_{k:04d}{ext}"
            _save(folder / cls / name, _image(rng, size))
            labels.append(idx)
            files.append(name)
    return labels, files


def _write_split(  # noqa: C901
    task: str, root: Path, split: str, n: int, c: int, size: int, layout: str, seed: int
) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 0 if split == "test" else 1, TASKS.index(task)])
    base = root / _TASK_DIRS[task]
    prompts = _prompts()

    if task in ("SUN397", "DTD", "EuroSAT"):
        if task == "SUN397":
            folders = _SUN397_FOLDERS[:c] + [
                f"z_extra_scene_{i}" for i in range(max(0, c - len(_SUN397_FOLDERS)))
            ]
            names = [f[2:].replace("_", " ") for f in sorted(folders)]
        elif task == "DTD":
            folders = _DTD_CLASSES[:c]
            names = [f.replace("_", " ") for f in sorted(folders)]
        else:
            mapping = prompts["classnames"]["EuroSAT_folder_to_openai"]
            folders = sorted(mapping)[:c]
            names = [mapping[f] for f in sorted(folders)]
        if split == "train":
            sub = "train"
        elif task == "EuroSAT":
            sub = "test"
        else:
            sub = "val" if layout == "task_vectors" else "test"
        labels, files = _folder_split(base / sub, folders, n, size, rng)
        return {"labels": labels, "classnames": names, "files": files}

    if task == "Cars":
        import scipy.io

        # `_` checks the `_`->space rule
        names_raw = [f"Make{i} Model_{i} {2000 + i % 13}" for i in range(c)]
        devkit = base / "devkit"
        devkit.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(
            devkit / "cars_meta.mat", {"class_names": np.array([names_raw], dtype=object)}
        )
        labels0 = _balanced_labels(rng, c, n)
        img_dir = base / ("cars_train" if split == "train" else "cars_test")
        dtype = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
        annos = np.zeros((1, len(labels0)), dtype=dtype)
        unlabeled = np.zeros((1, len(labels0)), dtype=[d for d in dtype if d[0] != "class"])
        files = []
        for j, lab in enumerate(labels0):
            fname = f"{j + 1:05d}.jpg"
            _save(img_dir / fname, _image(rng, size))
            # the .mat stores 1-based class ids
            annos[0, j] = (1, 1, size, size, int(lab) + 1, fname)
            unlabeled[0, j] = (1, 1, size, size, fname)
            files.append(fname)
        if split == "train":
            scipy.io.savemat(devkit / "cars_train_annos.mat", {"annotations": annos})
        else:
            scipy.io.savemat(devkit / "cars_test_annos.mat", {"annotations": unlabeled})
            where = base if layout == "task_vectors" else devkit
            scipy.io.savemat(where / "cars_test_annos_withlabels.mat", {"annotations": annos})
        return {
            "labels": labels0.tolist(),
            "classnames": [s.replace("_", " ") for s in names_raw],
            "files": files,
        }

    if task == "RESISC45":
        fixed = prompts["classnames"]["RESISC45"]
        folders = [s.replace(" ", "_") for s in fixed[:c]]
        img_dir = base / "NWPU-RESISC45"
        offset = 1 if split == "test" else 501
        listed = []
        for cls in folders:
            for k in range(n):
                name = f"{cls}_{offset + k:03d}.jpg"
                _save(img_dir / cls / name, _image(rng, size))
                listed.append((cls, name))
            # in no split list: must be skipped
            _save(img_dir / cls / f"{cls}_900.jpg", _image(rng, size))
        order = rng.permutation(len(listed))
        base.mkdir(parents=True, exist_ok=True)
        (base / f"resisc45-{split}.txt").write_text("".join(listed[i][1] + "\n" for i in order))
        listed.sort(key=lambda t: (sorted(folders).index(t[0]), t[1]))
        labels = [fixed.index(cls.replace("_", " ")) for cls, _ in listed]
        return {"labels": labels, "classnames": fixed[:c], "files": [nm for _, nm in listed]}

    if task == "SVHN":
        import scipy.io

        digits = _balanced_labels(rng, c, n)
        # [H, W, 3, N] as in the real file
        x = np.stack([_image(rng, size) for _ in digits], axis=-1)
        y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]  # digit 0 is stored as 10
        base.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(base / f"{split}_32x32.mat", {"X": x, "y": y})
        return {
            "labels": digits.tolist(),
            "classnames": prompts["classnames"]["SVHN"][:c],
            "files": None,
            "images": x,
        }

    if task == "GTSRB":
        fixed = prompts["classnames"]["GTSRB"]
        if split == "train":
            labels, files = [], []
            for cls in range(c):
                folder = base / "GTSRB" / "Training" / f"{cls:05d}"
                rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
                for k in range(n):
                    name = f"00000_{k:05d}.ppm"
                    _save(folder / name, _image(rng, size))
                    rows.append(f"{name};{size};{size};0;0;{size};{size};{cls}")
                    labels.append(cls)
                    files.append(name)
                (folder / f"GT-{cls:05d}.csv").write_text("\n".join(rows) + "\n")
            return {"labels": labels, "classnames": fixed[:c], "files": files}
        img_dir = base / "GTSRB" / "Final_Test" / "Images"
        labels0 = _balanced_labels(rng, c, n)
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        files = []
        for j, lab in enumerate(labels0):
            name = f"{j:05d}.ppm"
            _save(img_dir / name, _image(rng, size))
            rows.append(f"{name};{size};{size};0;0;{size};{size};{int(lab)}")
            files.append(name)
        (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
        return {"labels": labels0.tolist(), "classnames": fixed[:c], "files": files}

    if task == "MNIST":
        labels0 = _balanced_labels(rng, c, n)
        gray = rng.integers(0, 256, size=(len(labels0), size, size), dtype=np.uint8)
        raw = base / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        prefix = "t10k" if split == "test" else "train"
        header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in gray.shape)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + gray.tobytes())
        header = (0x801).to_bytes(4, "big") + len(labels0).to_bytes(4, "big")
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            header + labels0.astype(np.uint8).tobytes()
        )
        return {
            "labels": labels0.tolist(),
            "classnames": _prompts()["classnames"]["MNIST"][:c],
            "files": None,
            "images": gray,
        }

    raise ValueError(task)  # pragma: no cover


def write_fake_dataset(
    task: str,
    root: Path,
    n_per_class: int = 2,
    num_classes: int | None = None,
    image_size: int = 8,
    split: str | Sequence[str] = "test",
    layout: str = "task_vectors",
    seed: int = 0,
) -> Path:
    """Write a fake `task` under `root` in its real layout; returns the task's dataset folder.

    split: "test", "train", "both" (or a list). layout: "task_vectors" or "fork" (SUN397/DTD test in
    `test/` instead of `val/`, Cars' labelled test .mat inside `devkit/`). num_classes defaults to
    the real class count (SUN397: 3). Fewer classes than a fixed class list needs a classnames.txt
    to read.
    """
    task = _canonical(task)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    splits = (
        ["test", "train"] if split == "both" else [split] if isinstance(split, str) else list(split)
    )
    c = _FULL_COUNTS[task] if num_classes is None else int(num_classes)
    root = Path(root)
    for s in splits:
        if s not in ("test", "train"):
            raise ValueError(f"split must be test/train/both, got {s!r}")
        expected = _write_split(task, root, s, n_per_class, c, image_size, layout, seed)
        images = expected.pop("images", None)
        # array datasets: record the pixels a reader must return, as [N, H, W, 3]
        if images is not None:
            arr = (
                np.transpose(images, (3, 0, 1, 2))
                if task == "SVHN"
                else np.repeat(images[..., None], 3, -1)
            )
            expected["images_sha1"] = hashlib.sha1(np.ascontiguousarray(arr).data).hexdigest()
        expected["n"] = len(expected["labels"])
        out = root / ".fake_expected" / f"{task}_{s}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(expected))
    return root / _TASK_DIRS[task]


def read_expected(task: str, root: Path, split: str = "test") -> dict[str, Any]:
    """What `write_fake_dataset` recorded: labels (reading order), classnames, files (base names or
    None), n."""
    return json.loads(
        (Path(root) / ".fake_expected" / f"{_canonical(task)}_{split}.json").read_text()
    )
