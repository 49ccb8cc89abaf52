"""Local copies of Hugging Face image-classification datasets (FusionBench's copies of the 8
tasks).

Two on-disk forms are read, with pyarrow (no `datasets` dependency):

- a hub snapshot (`huggingface-cli download --repo-type dataset <repo> --local-dir DIR`): parquet
  shards named `<split>-NNNNN-of-NNNNN.parquet` (under `data/` or a config folder), the class names
  in the dataset card `README.md`, YAML front matter
  `dataset_info.features[label].dtype.class_label.names`;
- a `datasets.save_to_disk` folder: `dataset_dict.json`, `<split>/data-*.arrow` (Arrow IPC streams)
  and `<split>/dataset_info.json` whose `features.label.names` lists the class names.

The image column holds encoded files (`{"bytes": ..., "path": ...}`, the `datasets` Image feature);
they stay encoded in memory (`EncodedImages`) and are decoded by the same preprocessing as image
files. This module only parses; mapping the dataset's class order onto a head's order is in
`labels.py`; `splits.read_hf_split` reads a task's split from its folder.

Repository names (the task registry's `hf_dataset`) follow FusionBench's test-set configs
(github.com/tanganke/fusion_bench, `config/dataset/image_classification/test/<task>.yaml`, read
2026-11): `tanganke/{sun397,stanford_cars,resisc45,eurosat,gtsrb,dtd}`, and the hub's own `svhn`
(config `cropped_digits`) and `mnist`, which the hub now serves as `ufldl-stanford/svhn` and
`ylecun/mnist`. What the hub's pages show (huggingface.co/datasets/..., read 2026-11, not
downloaded): tanganke/gtsrb's card names its 43 classes with the CLIP prompt names of
zeroshot_prompts.json, in class-id order; tanganke/sun397 names them like "abbey", "airplane cabin"
(test: 19.9k rows, 18 shards); tanganke/stanford_cars starts "AM General Hummer SUV 2000", "Acura
RL Sedan 2012" (cars_meta.mat's first two). The other cards were not checked: the label mapping
(labels.map_labels_to_head) never assumes names or orders and refuses what it cannot match by
name.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class HFDatasetError(ValueError):
    """A Hugging Face dataset folder is missing a split, its class names or its image / label
    columns."""


class EncodedImages(Sequence[bytes]):
    """The encoded image files of one split (PNG / JPEG bytes), kept in their Arrow buffers (no
    copy)."""

    def __init__(self, chunks: list[Any]) -> None:
        self._chunks = chunks  # pyarrow BinaryArray / LargeBinaryArray pieces, in row order
        self._starts = np.cumsum([0] + [len(c) for c in chunks])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> bytes:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        value = self._chunks[k][i - int(self._starts[k])].as_py()
        if value is None:
            raise HFDatasetError(f"image {i} has no bytes (a null entry in the image column)")
        return value

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self)):
            yield self[i]

    def sha1(self) -> str:
        """SHA-1 over every image's bytes (and lengths): the preprocessing cache's fingerprint."""
        h = hashlib.sha1()
        for chunk in self._chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(memoryview(buf))
        return h.hexdigest()


@dataclass
class HFSplit:
    """One split as stored: class names in the dataset's ClassLabel order, labels indexing them."""

    classnames: list[str]
    labels: np.ndarray  # int64 [N], indices into `classnames`
    images: EncodedImages
    source: str  # e.g. "Hugging Face parquet data/sun397/data/test-*.parquet (2 shards)"


def is_hf_dataset(folder: str | Path) -> bool:
    """True if `folder` looks like a local Hugging Face dataset (hub snapshot or save_to_disk
    folder)."""
    folder = Path(folder)
    if (folder / "dataset_dict.json").is_file() or (folder / "dataset_info.json").is_file():
        return True
    return (folder / "README.md").is_file() and any(folder.glob("*/*.parquet"))


def _shard_split(path: Path) -> str:
    # Hub shards: `test-00000-of-00001.parquet` (or `test.parquet`); the split is the name before
    # the index.
    return re.sub(r"(-\d{5}-of-\d{5})?$", "", path.stem)


def _parquet_shards(folder: Path, split: str) -> list[Path]:
    shards = sorted(
        p for p in folder.rglob("*.parquet") if _shard_split(p) == split or p.parent.name == split
    )
    return [
        p for p in shards if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]


def _card_classnames(card: Path) -> list[str] | None:
    """ClassLabel names from a dataset card's YAML front matter (None if it has none)."""
    import yaml  # pyyaml: a dependency of huggingface_hub, pinned in constraints.txt

    text = card.read_text(encoding="utf-8")
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return None
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as e:
        raise HFDatasetError(f"{card}: the YAML front matter does not parse ({e})") from e
    infos = meta.get("dataset_info") or []
    for info in infos if isinstance(infos, list) else [infos]:
        for feature in (info or {}).get("features") or []:
            dtype = feature.get("dtype") if isinstance(feature, dict) else None
            names = dtype.get("class_label", {}).get("names") if isinstance(dtype, dict) else None
            if names:
                # Written as a mapping {'0': name, ...} by `datasets`; a list is accepted too.
                if isinstance(names, dict):
                    return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]
                return [str(n) for n in names]
    return None


def _info_classnames(info_path: Path) -> list[str] | None:
    """ClassLabel names from a save_to_disk `dataset_info.json`."""
    info = json.loads(info_path.read_text(encoding="utf-8"))
    for feature in (info.get("features") or {}).values():
        if (
            isinstance(feature, dict)
            and feature.get("_type") == "ClassLabel"
            and feature.get("names")
        ):
            return [str(n) for n in feature["names"]]
    return None


def _columns(table: Any, where: str) -> tuple[str, str]:
    """(image column, label column): the struct column with `bytes`, and `label` (else the one
    integer column)."""
    import pyarrow as pa

    images = [
        f.name
        for f in table.schema
        if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0
    ]
    ints = [f.name for f in table.schema if pa.types.is_integer(f.type)]
    label = "label" if "label" in ints else (ints[0] if len(ints) == 1 else None)
    if not images or label is None:
        raise HFDatasetError(
            f"{where}: expected an image column (struct with 'bytes') and an integer 'label'"
            f" column; found {[f'{f.name}: {f.type}' for f in table.schema]}"
        )
    return images[0], label


def read_hf_folder(folder: str | Path, split: str = "test") -> HFSplit:
    """Read `split` of a local Hugging Face dataset folder (either form of the module doc).

    Returns the ClassLabel names in the dataset's order, int64 labels [N] and the encoded images.
    Raises HFDatasetError naming the folder / file and what was expected.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    if (folder / "dataset_dict.json").is_file() or (folder / "dataset_info.json").is_file():
        split_dir = folder / split if (folder / "dataset_dict.json").is_file() else folder
        shards = sorted(split_dir.glob("data-*.arrow"))
        info = split_dir / "dataset_info.json"
        if not shards or not info.is_file():
            raise HFDatasetError(
                f"{folder}: save_to_disk folder without {split_dir}/data-*.arrow +"
                " dataset_info.json"
            )
        tables = []
        for p in shards:
            with pa.memory_map(str(p)) as src:
                tables.append(pa.ipc.open_stream(src).read_all())
        classnames = _info_classnames(info)
        names_from, source = (
            info,
            f"Hugging Face save_to_disk {split_dir}/data-*.arrow ({len(shards)} shards)",
        )
    else:
        shards = _parquet_shards(folder, split)
        if not shards:
            found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))[:6]
            raise HFDatasetError(
                f"{folder}: no parquet shards of split {split!r} ({split}-*.parquet); found {found}"
            )
        tables = [pq.read_table(p) for p in shards]
        card = folder / "README.md"
        classnames = _card_classnames(card) if card.is_file() else None
        names_from, source = (
            card,
            f"Hugging Face parquet {shards[0].parent}/{split}-*.parquet ({len(shards)} shards)",
        )
    if classnames is None:
        raise HFDatasetError(
            f"{names_from}: no ClassLabel names (dataset_info features, dtype class_label) found"
        )
    image_col, label_col = _columns(tables[0], str(shards[0]))
    table = pa.concat_tables(tables)
    labels = table.column(label_col).to_numpy().astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classnames)):
        raise HFDatasetError(
            f"{source}: labels range over [{labels.min()}, {labels.max()}] but {names_from} names"
            f" {len(classnames)} classes"
        )
    # flatten() (unlike field()) honours a sliced chunk's offset.
    bytes_index = table.schema.field(image_col).type.get_field_index("bytes")
    chunks = [chunk.flatten()[bytes_index] for chunk in table.column(image_col).chunks]
    return HFSplit(classnames, labels, EncodedImages(chunks), source)
