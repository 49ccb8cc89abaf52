"""The mini benchmark's pretraining pool (never the evaluation images; MNIST digits from the other
half): a list of *groups*, each with its own label set of caption phrases (drawn from the same
vocabulary the evaluation prompts use) and its own generator; concepts appear there in other styles,
with a subset of the classes, or in other words, so that zero-shot transfer to the evaluation tasks
(`tasks.py`) is partial (a miniature of web pretraining).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from adamerging.mini import generators as g
from adamerging.mini.generators import S
from adamerging.mini.tasks import DIGIT_WORDS, EUROSAT, SCENES, aerial, balanced, scene, stack

POOL_TEMPLATES = [
    "a photo of {c}.",
    "a picture of {c}.",
    "an image of {c}.",
    "{c}.",
    "a photo of the {c}.",
    "a small photo of {c}.",
]
POOL_COLORS = ["red", "green", "blue", "yellow", "orange", "purple", "white", "black"]


def pool_shapes(
    rng: np.random.Generator, n: int
) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Pool group: coloured shapes (8 POOL_COLORS x 10 generators.SHAPES, e.g. "red circle") on
    random backgrounds. Returns ((uint8 [n, 32, 32, 3], int64 [n]), the 80 caption phrases);
    balanced."""
    k = len(POOL_COLORS) * len(g.SHAPES)
    labels = balanced(rng, n, k)
    imgs = []
    for lab in labels:
        col, shp = POOL_COLORS[lab // len(g.SHAPES)], g.SHAPES[lab % len(g.SHAPES)]
        img = g.background(rng)
        d = ImageDraw.Draw(img)
        r = rng.uniform(10, 24)
        g.draw_shape(
            d,
            shp,
            S / 2 + rng.uniform(-10, 10),
            S / 2 + rng.uniform(-10, 10),
            r,
            fill=g._jitter_color(rng, g.COLORS[col], 20),
            outline=g._rand_color(rng),
            rot=rng.uniform(-0.2, 0.2),
        )
        imgs.append(g._finish(rng, img, blur=rng.uniform(0, 0.8), noise=5))
    names = [f"{c} {s}" for c in POOL_COLORS for s in g.SHAPES]
    return stack(imgs, labels), names


def pool_handwritten(
    rng: np.random.Generator, n: int
) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Pool group: MNIST digits from the pretraining half of mnist_halves() (drawn with
    replacement), half in MNIST's own style (light strokes on a dark ground, centred), half
    recoloured, scaled, shifted and rotated over random backgrounds. Returns ((uint8 [n, 32, 32, 3],
    int64 [n]), ["a handwritten zero", ...]); labels as drawn, not balanced."""
    (X, y), _ = g.mnist_halves()
    idx = rng.integers(0, len(X), n)
    imgs = []
    for i in idx:
        # the scanned style MNIST itself has: light strokes on a dark ground, centred
        if rng.random() < 0.5:
            grey = int(rng.integers(0, 40))
            bg, fg = (
                g.Image.new("RGB", (S, S), (grey, grey, grey)),
                g._jitter_color(rng, (245, 245, 245), 10),
            )
            img = g.render_handwritten(
                rng,
                X[i],
                fg,
                bg,
                rng.uniform(0.8, 1.0),
                rng.uniform(-2, 2),
                rng.uniform(-2, 2),
                rng.uniform(-10, 10),
            )
        else:
            bg = g.background(rng, "solid" if rng.random() < 0.5 else None)
            fg = g._rand_color(rng)
            img = g.render_handwritten(
                rng,
                X[i],
                fg,
                bg,
                rng.uniform(0.6, 1.0),
                rng.uniform(-6, 6),
                rng.uniform(-6, 6),
                rng.uniform(-20, 20),
            )
        imgs.append(g._finish(rng, img, blur=rng.uniform(0, 0.8), noise=5))
    return stack(imgs, y[idx]), [f"a handwritten {w}" for w in DIGIT_WORDS]


PRINTED = [str(i) for i in range(10)] + [str(10 * i) for i in range(1, 10)]


def pool_printed(
    rng: np.random.Generator, n: int
) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Pool group: printed numbers (PRINTED: 0-9 and 10-90) on plain backgrounds. Returns
    ((uint8 [n, 32, 32, 3], int64 [n]), ['the number: "0"', ...]); balanced."""
    labels = balanced(rng, n, len(PRINTED))
    imgs = []
    for lab in labels:
        light = rng.random() < 0.5
        colour = rng.random() < 0.5
        bgc = (
            g._rand_color(rng)
            if colour
            else g._jitter_color(rng, (235, 235, 235) if light else (20, 20, 20), 15)
        )
        fgc = (
            g._rand_color(rng)
            if colour
            else g._jitter_color(rng, (20, 20, 20) if light else (235, 235, 235))
        )
        img = g.Image.new("RGB", (S, S), bgc)
        d = ImageDraw.Draw(img)
        g.render_printed(
            d,
            PRINTED[lab],
            S / 2 + rng.uniform(-4, 4),
            S / 2 + rng.uniform(-4, 4),
            int(rng.integers(26, 44)),
            fgc,
        )
        imgs.append(g._finish(rng, img, noise=3))
    return stack(imgs, labels), [f'the number: "{p}"' for p in PRINTED]


def pool_arrows(
    rng: np.random.Generator, n: int
) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Pool group: arrows pointing left, right, up or down on random backgrounds. Returns
    ((uint8 [n, 32, 32, 3], int64 [n]), ["an arrow pointing left", ...]); balanced."""
    dirs = ["left", "right", "up", "down"]
    labels = balanced(rng, n, 4)
    imgs = []
    for lab in labels:
        img = g.background(rng)
        d = ImageDraw.Draw(img)
        g.draw_arrow(
            d,
            S / 2 + rng.uniform(-8, 8),
            S / 2 + rng.uniform(-8, 8),
            rng.uniform(12, 24),
            dirs[lab],
            g._rand_color(rng),
        )
        imgs.append(g._finish(rng, img, noise=4))
    return stack(imgs, labels), [f"an arrow pointing {d}" for d in dirs]


POOL_PATTERNS = list(g.DTD_KINDS)


def pool_patterns(
    rng: np.random.Generator, n: int
) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Pool group: the DTD pattern kinds in named colours, without mask jitter or blur. Returns
    ((uint8 [n, 32, 32, 3], int64 [n]), ["a banded pattern", ...]); balanced."""
    labels = balanced(rng, n, len(POOL_PATTERNS))
    imgs = []
    for lab in labels:
        c0 = g._jitter_color(rng, g.COLORS[POOL_COLORS[rng.integers(8)]], 10)
        c1 = g._jitter_color(rng, g.COLORS[POOL_COLORS[rng.integers(8)]], 10)
        img = g.texture(
            rng,
            POOL_PATTERNS[lab],
            c0,
            c1,
            period=rng.uniform(10, 22),
            angle=rng.uniform(0, math.pi),
        )
        imgs.append(g._finish(rng, img))
    return stack(imgs, labels), [f"a {p} pattern" for p in POOL_PATTERNS]


POOL_TERRAIN = ["water", "grass", "forest", "sand", "snow", "rock", "soil", "sky"]


def pool_terrain(
    rng: np.random.Generator, n: int
) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Pool group: close-up land-cover textures (POOL_TERRAIN). Returns ((uint8 [n, 32, 32, 3],
    int64 [n]), ["close up water", ...]); balanced."""
    labels = balanced(rng, n, len(POOL_TERRAIN))
    imgs = [
        g._finish(
            rng,
            Image.fromarray(
                np.clip(g.terrain(rng, POOL_TERRAIN[lab], jit=30), 0, 255).astype(np.uint8)
            ),
            noise=5,
            bright=(0.8, 1.1),
        )
        for lab in labels
    ]
    return stack(imgs, labels), [f"close up {t}" for t in POOL_TERRAIN]


POOL_SCENES = ["beach", "desert", "ocean", "snowfield", "night sky", "field"]


def pool_scenes(
    rng: np.random.Generator, n: int
) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Pool group: 6 of the SCENES in the flat style (colour bands, no objects). Returns
    ((uint8 [n, 32, 32, 3], int64 [n]), ["a drawing of a beach", ...]); balanced."""
    ks = [SCENES.index(s) for s in POOL_SCENES]
    labels = balanced(rng, n, len(ks))
    imgs = [g._finish(rng, scene(rng, ks[lab], flat=True), noise=3) for lab in labels]
    return stack(imgs, labels), [f"a drawing of a {s}" for s in POOL_SCENES]


def pool_photos(
    rng: np.random.Generator, n: int
) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Pool group: random crops of the generators.photos(), one label per photo. Returns
    ((uint8 [n, 32, 32, 3], int64 [n]), ["a cat", ...]); balanced."""
    names = list(g.photos())
    labels = balanced(rng, n, len(names))
    imgs = [g._finish(rng, g.photo_crop(rng, names[lab]), noise=3) for lab in labels]
    nice = {
        "chelsea": "cat",
        "coffee": "cup of coffee",
        "immunohistochemistry": "tissue sample",
        "hubble_deep_field": "galaxy",
        "camera": "cameraman",
        "china": "temple",
        "flower": "flower",
    }
    return stack(imgs, labels), [f"a {nice.get(k, k)}" for k in names]


def pool_numerals(
    rng: np.random.Generator, n: int
) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Pool group: the pretraining half's handwritten digits (as pool_handwritten) captioned with
    the numeral, ['the number: "0"', ...], the phrase the MNIST / SVHN prompts use. Returns ((uint8
    [n, 32, 32, 3], int64 [n]), the 10 caption phrases)."""
    data, _ = pool_handwritten(rng, n)
    return data, [f'the number: "{i}"' for i in range(10)]


POOL_AERIAL = [
    "annual crop land",
    "highway or road",
    "industrial buildings",
    "river",
    "lake or sea",
]


def pool_aerial(
    rng: np.random.Generator, n: int
) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Pool group: 5 of the 10 EUROSAT classes (POOL_AERIAL) seen from above in a coarse style
    (drawn like the EuroSAT stand-in, then pixelated to 16x16 blocks). Returns ((uint8 [n, 32, 32,
    3], int64 [n]), ["satellite view of annual crop land", ...]); balanced."""
    ks = [EUROSAT.index(c) for c in POOL_AERIAL]
    labels = balanced(rng, n, len(ks))
    imgs = [
        g._finish(
            rng,
            aerial(rng, ks[lab]).resize((16, 16), Image.BOX).resize((S, S), Image.NEAREST),
            noise=4,
        )
        for lab in labels
    ]
    return stack(imgs, labels), [f"satellite view of {c}" for c in POOL_AERIAL]


POOL_GROUPS = {
    "shapes": (pool_shapes, 8),
    "handwritten": (pool_handwritten, 3),
    "printed": (pool_printed, 3),
    "arrows": (pool_arrows, 1),
    "patterns": (pool_patterns, 2),
    "terrain": (pool_terrain, 2),
    "scenes": (pool_scenes, 2),
    "photos": (pool_photos, 2),
    "numerals": (pool_numerals, 2),
    "aerial": (pool_aerial, 2),
}  # name -> (generator, relative share of the pool)
