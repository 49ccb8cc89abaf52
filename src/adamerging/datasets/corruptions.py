"""The 7 test-image corruptions of the paper's robustness experiment, at one fixed severity, seeded.

They follow ImageNet-C's definitions (Hendrycks & Dietterich, 2019) at about its severity 3, written
with numpy / PIL / scipy and applied to the preprocessed uint8 images ([N, 3, S, S], after resize
and centre crop), so they scale with the image size. `spatter` is simplified: ImageNet-C's version
(liquid or mud splashes from several filtered noise layers) becomes a single filtered-noise mask of
muddy brown blended into the image; it keeps the character (occluding irregular blobs), not the
exact statistics.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

CORRUPTIONS = (
    "motion_blur",
    "impulse_noise",
    "gaussian_noise",
    "pixelate",
    "spatter",
    "contrast",
    "jpeg_compression",
)


def _float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0


def _uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def gaussian_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, std 0.18 on the [0, 1] scale (ImageNet-C severity 3), independent
    per value; uint8 [N, 3, S, S] -> uint8 [N, 3, S, S], clipped."""
    return _uint8(_float(x) + rng.normal(0.0, 0.18, size=x.shape).astype(np.float32))


def impulse_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise: 4.5 % of the values set to 0 and 4.5 % to 255, independently per
    channel (ImageNet-C severity 3, amount 0.09); uint8 [N, 3, S, S] -> uint8 [N, 3, S, S]."""
    # salt and pepper on 9 % of the values (ImageNet-C severity 3)
    out = x.copy()
    u = rng.random(x.shape)
    out[u < 0.045] = 0
    out[u > 1 - 0.045] = 255
    return out


def contrast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast reduced to 0.2 about each image's mean over all pixels and channels (ImageNet-C
    severity 3); deterministic (`rng` unused); uint8 [N, 3, S, S] -> uint8 [N, 3, S, S]."""
    f = _float(x)
    mean = f.mean(axis=(1, 2, 3), keepdims=True)
    return _uint8((f - mean) * 0.2 + mean)


def _per_image(x: np.ndarray, fn) -> np.ndarray:
    return np.stack([fn(img) for img in x])


def pixelate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Box-downsampled to half the side (at least 1 pixel) and upsampled back with nearest neighbour
    (factor 0.5, ImageNet-C's severity 2 value); deterministic (`rng` unused); uint8 [N, 3, S, S]
    (square
    images) -> uint8 [N, 3, S, S]."""
    size = x.shape[-1]
    small = max(1, int(size * 0.5))

    def one(img):
        pil = Image.fromarray(img.transpose(1, 2, 0))
        return np.asarray(
            pil.resize((small, small), Image.BOX).resize((size, size), Image.NEAREST)
        ).transpose(2, 0, 1)

    return _per_image(x, one)


def jpeg_compression(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image round-tripped through PIL's JPEG encoder at quality 15 (ImageNet-C severity 3);
    deterministic (`rng` unused); uint8 [N, 3, S, S] -> uint8 [N, 3, S, S]."""

    def one(img):
        buffer = io.BytesIO()
        Image.fromarray(img.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=15)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).transpose(
            2, 0, 1
        )

    return _per_image(x, one)


def motion_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur: a line kernel of odd length about 7 % of the side (at least 3 pixels, 15
    at 224), rotated by a per-image angle uniform in [-45, 45] degrees, convolved with each channel
    (edges replicated); uint8 [N, 3, S, S] -> uint8 [N, 3, S, S]."""
    size = x.shape[-1]
    length = max(3, int(round(size * 0.07)) | 1)  # odd kernel, ~15 px at 224

    def one(img):
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0
        kernel = ndimage.rotate(kernel, rng.uniform(-45, 45), reshape=False, order=1)
        kernel /= kernel.sum()
        f = _float(img)
        return _uint8(np.stack([ndimage.convolve(c, kernel, mode="nearest") for c in f]))

    return _per_image(x, one)


def spatter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Simplified ImageNet-C spatter (see the module docstring): a per-image Gaussian-filtered noise
    mask (sigma max(1, S / 56) pixels, covering about 10-20 % of the image) blends in muddy brown;
    uint8 [N, 3, S, S] -> uint8 [N, 3, S, S]."""
    size = x.shape[-1]
    mud = np.array([63, 42, 20], np.float32).reshape(3, 1, 1) / 255.0

    def one(img):
        noise = ndimage.gaussian_filter(
            rng.normal(0.65, 0.3, (size, size)), sigma=max(1.0, size / 56)
        )
        mask = np.clip((noise - 0.68) * 6.0, 0.0, 1.0)[None]  # irregular blobs covering ~10-20 %
        return _uint8(_float(img) * (1 - mask) + mud * mask)

    return _per_image(x, one)


_FUNCTIONS = {
    f.__name__: f
    for f in (
        motion_blur,
        impulse_noise,
        gaussian_noise,
        pixelate,
        spatter,
        contrast,
        jpeg_compression,
    )
}


def corrupt(images: torch.Tensor, name: str, seed: int = 0) -> torch.Tensor:
    """`name` applied to uint8 images [N, 3, S, S]; same seed, same output."""
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of {', '.join(CORRUPTIONS)}")
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"corrupt expects uint8 images [N, 3, S, S], got {x.dtype} {x.shape}")
    rng = np.random.default_rng([seed, CORRUPTIONS.index(name)])
    return torch.from_numpy(np.ascontiguousarray(_FUNCTIONS[name](x, rng)))
