"""Preprocessing: every image of a split decoded and transformed once (CLIP's validation transform
without normalisation: resize the shorter side bicubic, centre crop, RGB) into uint8 [N, 3, S, S],
cached as a memory-mapped .npy keyed by a fingerprint of what it depends on."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from adamerging.datasets.hf_copies import EncodedImages
from adamerging.datasets.suite_readers import DatasetImages
from adamerging.datasets.tasks import Split
from adamerging.runtime.errors import DatasetError, WriteError
from adamerging.runtime.files import atomic_path, atomic_write

# Bump when the preprocessing changes, so old caches are rebuilt rather than silently reused.
_CACHE_VERSION = "clip-val-uint8-v2"  # v2: alpha on white, 16-bit by range

log = logging.getLogger(__name__)


# What every decoded image goes through (recorded in each result's "preprocessing")
DECODING = {
    "alpha": "composited on white (Hugging Face CLIPImageProcessor's convert_rgb)",
    "16-bit": "scaled by its range (I;16: / 257; 32-bit integer and float: by their maximum)",
    "other modes": "PIL convert('RGB')",
}


def preprocessing_record(size: int, mean: Any, std: Any) -> dict[str, Any]:
    """What a result records of its images' preprocessing (`mean`, `std`: the normalisation on the
    compute device)."""
    return {
        "resize": f"shorter side to {size} px, bicubic",
        "crop": f"centre, {size} x {size}",
        **DECODING,
        "mean": [round(float(x), 8) for x in mean],
        "std": [round(float(x), 8) for x in std],
        "cache_version": _CACHE_VERSION,
    }


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB image as CLIP sees it (`DECODING`): 16-bit and wider grayscale scaled by range,
    not clipped to white; transparent pixels composited on white, not left at their stored colour
    (often black, as a bare convert('RGB') gives)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        im = _eight_bit(im)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        im.mode == "P" and "transparency" in im.info
    ):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _eight_bit(im: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grayscale image as 8-bit 'L', scaled by its range."""
    arr = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16"):
        top = 65535.0
    elif im.mode == "F" and arr.max(initial=0) <= 1.0:
        top = 1.0
    else:
        top = max(255.0, float(arr.max(initial=0)))
        top = 65535.0 if 255.0 < top <= 65535.0 else top
    return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def _load_image(item: Any) -> Image.Image:
    """Decode one image to RGB (`to_rgb`): a file, an encoded file (a Hugging Face dataset's bytes),
    a PIL image or a uint8 array."""
    if isinstance(item, (str, os.PathLike)):
        with Image.open(item) as im:
            return to_rgb(im)
    if isinstance(item, bytes):  # an encoded file from a Hugging Face dataset
        with Image.open(io.BytesIO(item)) as im:
            return to_rgb(im)
    if isinstance(item, Image.Image):  # a torchvision dataset's image (suite_readers)
        return to_rgb(item)
    return Image.fromarray(np.asarray(item, dtype=np.uint8)).convert("RGB")


def _transform(img: Image.Image, size: int) -> np.ndarray:
    """CLIP's validation transform without normalisation: resize shorter side (bicubic), centre
    crop.

    Same arithmetic as torchvision's Resize(size, BICUBIC) + CenterCrop(size) on a PIL image.
    Returns uint8 [3, size, size].
    """
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size)).convert("RGB")
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _fingerprint(split: Split, size: int) -> dict[str, Any]:
    """What the cached array depends on; any change rebuilds the cache."""
    fp: dict[str, Any] = {
        "version": _CACHE_VERSION,
        "task": split.task,
        "split": split.split,
        "source": str(split.source),
        "n": len(split),
        "size": int(size),
    }
    if isinstance(split.images, np.ndarray):
        arr = np.ascontiguousarray(split.images)
        fp["shape"] = list(arr.shape)
        # cheap next to decoding (80 MB for SVHN test)
        fp["images_sha1"] = hashlib.sha1(arr.data).hexdigest()
    elif isinstance(split.images, EncodedImages):
        fp["encoded_sha1"] = split.images.sha1()  # every byte: cheap next to decoding
    elif isinstance(split.images, DatasetImages):
        fp["dataset_files_sha1"] = split.images.fingerprint()
    else:
        files = [str(p) for p in split.images]
        fp["first"], fp["last"] = files[0], files[-1]
        fp["files_sha1"] = hashlib.sha1("\n".join(files).encode("utf-8")).hexdigest()
        # Every file's size and modification time: an image edited or replaced in place under its
        # own name rebuilds the cache (one stat per file: about 1 s for 90,000 images)
        fp["files_stat_sha1"] = _stat_digest(files)
    return fp


def _stat_digest(files: list[str]) -> str:
    """sha1 over each file's size and modification time (ns)."""
    h = hashlib.sha1()
    for f in files:
        st = os.stat(f)
        h.update(f"{st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _fill(out: np.ndarray, split: Split, size: int, progress: bool, num_workers: int) -> None:
    """Decode + transform every image into the preallocated `out` (threads: PIL releases the
    GIL)."""
    images = split.images

    def work(i: int) -> None:
        item = images[i]
        try:
            out[i] = _transform(_load_image(item), size)
        except DatasetError:
            raise
        except Exception as e:  # noqa: BLE001 - name the file that failed
            where = item if isinstance(item, (str, os.PathLike)) else f"image {i} of {split.source}"
            raise DatasetError(f"{split.task}: cannot decode {where}: {e}") from e

    from tqdm.auto import tqdm

    n = len(split)
    with tqdm(
        total=n, disable=not progress, desc=f"{split.task} {split.split} {size}px", unit="img"
    ) as bar:
        if num_workers <= 1:
            for i in range(n):
                work(i)
                bar.update(1)
            return
        chunk = 256  # bounded work in flight; each worker writes its own row
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                list(pool.map(work, range(start, stop)))
                bar.update(stop - start)


def _load_cache(npy: Path, meta: Path, fp: dict[str, Any]) -> torch.Tensor | None:
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        stored = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stored.get("fingerprint") != fp:
        return None
    try:
        # "c" (copy-on-write) rather than "r": torch wants a writable array, and a stray in-place
        # write then stays private instead of crashing on a read-only mapping.
        arr = np.load(npy, mmap_mode="c")
    except (OSError, ValueError):
        return None
    if arr.dtype != np.uint8 or arr.shape != (fp["n"], 3, fp["size"], fp["size"]):
        return None
    return torch.from_numpy(arr)


def _write_cache(
    npy: Path, meta: Path, fp: dict, split: Split, size: int, progress: bool, workers: int
) -> None:
    """Decode `split` into the cache `npy` and its sidecar `meta` (atomically: a failed write leaves
    neither half-written)."""
    # Drop the sidecar first: if we die between replacing the .npy and writing the new sidecar,
    # no stale fingerprint can vouch for the new array.
    meta.unlink(missing_ok=True)
    # Filled in place on disk: memory stays flat even for SVHN train at 224 px.
    with atomic_path(npy) as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(split), 3, size, size)
        )
        _fill(out, split, size, progress, workers)
        out.flush()
        del out
    with atomic_write(meta, "w") as f:
        f.write(json.dumps({"n": len(split), "fingerprint": fp}, indent=1))


def preprocess_images(
    split: Split,
    image_size: int,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    num_workers: int | None = None,
) -> torch.Tensor:
    """All images of `split` as uint8 [N, 3, S, S] (resize shorter side bicubic, centre crop, RGB;
    no normalisation).

    With `cache_dir`, the array is kept as `<cache_dir>/<task>_<split>_<S>.npy` (+ `.json` sidecar
    with its fingerprint) and memory-mapped on later calls; it is rebuilt when the fingerprint
    differs. `num_workers`: decoding threads (default: up to 8, one per CPU).
    """
    size = int(image_size)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    n = len(split)
    if n == 0:
        return torch.empty((0, 3, size, size), dtype=torch.uint8)
    if cache_dir is None:
        out = np.empty((n, 3, size, size), dtype=np.uint8)
        _fill(out, split, size, progress, workers)
        return torch.from_numpy(out)

    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    stem = f"{split.task}_{split.split}_{size}"
    npy, meta = cache / f"{stem}.npy", cache / f"{stem}.json"
    fp = _fingerprint(split, size)
    cached = _load_cache(npy, meta, fp)
    if cached is not None:
        return cached

    try:
        _write_cache(npy, meta, fp, split, size, progress, workers)
    except WriteError as e:  # a full disk: the run goes on without the cache
        log.warning("%s; decoding %s in memory, uncached", e, split.task)
        return preprocess_images(split, size, None, progress, workers)
    loaded = _load_cache(npy, meta, fp)
    if loaded is None:  # pragma: no cover - only if the file vanished under us
        raise DatasetError(f"{split.task}: cache {npy} could not be read back")
    return loaded
