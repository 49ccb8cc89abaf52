"""Tiny local Hugging Face image datasets in the two on-disk forms the readers accept.

`write_hf_dataset` writes random PNG images with given ClassLabel names and labels, either as a hub
snapshot (README.md with `dataset_info` front matter + `data/<split>-NNNNN-of-NNNNN.parquet`) or as
a `datasets.save_to_disk` folder (`dataset_dict.json`, `<split>/data-*.arrow`, `dataset_info.json`),
with the column types the `datasets` library writes (image: struct<bytes, path>, label: int64).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _card(classnames: Sequence[str], splits: dict[str, int]) -> str:
    names = "\n".join(f"          '{i}': {json.dumps(n)}" for i, n in enumerate(classnames))
    split_rows = "\n".join(f"  - name: {s}\n    num_examples: {n}" for s, n in splits.items())
    return (
        "---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n   "
        f" dtype:\n      class_label:\n        names:\n{names}\n "
        f" splits:\n{split_rows}\nconfigs:\n- config_name: default\n  data_files:\n  - split:"
        " test\n    path: data/test-*\n---\n\n# A fake dataset card\n"
    )


def write_hf_dataset(
    folder: Path,
    classnames: Sequence[str],
    labels: Sequence[int],
    *,
    split: str = "test",
    form: str = "parquet",
    size: int = 8,
    seed: int = 0,
    shards: int = 2,
    subfolder: str = "data",
    images: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Write the dataset (random images unless `images` gives them); returns the uint8 images in row
    order."""
    rng = np.random.default_rng(seed)
    if images is None:
        images = [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in labels]
    encoded = [{"bytes": _png(a), "path": f"{i:05d}.png"} for i, a in enumerate(images)]
    table = pa.table(
        {
            "image": pa.array(encoded, type=_IMAGE_TYPE),
            "label": pa.array(list(labels), type=pa.int64()),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(labels), shards + 1).astype(int)
    if form == "parquet":
        (folder / "README.md").write_text(_card(classnames, {split: len(labels)}), encoding="utf-8")
        (folder / subfolder).mkdir(parents=True, exist_ok=True)
        for k in range(shards):
            piece = table.slice(bounds[k], bounds[k + 1] - bounds[k])
            pq.write_table(piece, folder / subfolder / f"{split}-{k:05d}-of-{shards:05d}.parquet")
    elif form == "save_to_disk":
        (folder / "dataset_dict.json").write_text(json.dumps({"splits": [split]}), encoding="utf-8")
        split_dir = folder / split
        split_dir.mkdir(parents=True, exist_ok=True)
        info = {
            "features": {
                "image": {"_type": "Image"},
                "label": {"names": list(classnames), "_type": "ClassLabel"},
            }
        }
        (split_dir / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
        (split_dir / "state.json").write_text(json.dumps({"_data_files": []}), encoding="utf-8")
        for k in range(shards):
            piece = table.slice(bounds[k], bounds[k + 1] - bounds[k])
            with pa.OSFile(str(split_dir / f"data-{k:05d}-of-{shards:05d}.arrow"), "wb") as sink:
                with pa.ipc.new_stream(sink, piece.schema) as writer:
                    writer.write_table(piece)
    else:
        raise ValueError(form)
    return images
