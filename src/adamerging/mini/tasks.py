"""The mini tasks (stand-ins for the paper's 8); the separate pretraining pool is in `pool.py`.

Each evaluation task is a function ``gen(rng, n, split) -> (uint8 [n,32,32,3], int64 [n])`` plus its
class names and prompt templates.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from adamerging.mini import generators as g
from adamerging.mini.generators import S

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def stack(imgs, labels):
    return np.stack(imgs).astype(np.uint8), np.asarray(labels, dtype=np.int64)


def balanced(rng, n, k):
    lab = np.arange(n) % k
    return rng.permutation(lab)


def per_label(rng, n, classes, draw):
    """n images over `classes` balanced labels (shuffled first), each drawn by draw(rng, label) ->
    uint8 [S, S, 3]."""
    labels = balanced(rng, n, classes)
    return stack([draw(rng, k) for k in labels], labels)


# ================================================================================================
# evaluation tasks
def gen_mnist(rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST stand-in: real digits from the held-out half of mnist_halves() (never in pretraining),
    from fixed disjoint subsets (40 % for split "test", the rest for any other split), drawn without
    replacement, resized bilinearly to 32x32 and repeated to RGB. Returns (uint8 [m, 32, 32, 3],
    int64 [m]) with m = min(n, subset size); labels not balanced."""
    _, (X, y) = g.mnist_halves()  # held-out half: never seen in pretraining
    # fixed disjoint train / test subsets of the held-out half
    order = np.random.default_rng(77).permutation(len(X))
    ntest = len(X) * 2 // 5
    pool_idx = order[:ntest] if split == "test" else order[ntest:]
    idx = rng.permutation(pool_idx)[:n]
    imgs = []
    for i in idx:
        a = np.asarray(Image.fromarray(X[i]).resize((g.OUT, g.OUT), Image.BILINEAR))
        imgs.append(np.repeat(a[..., None], 3, axis=2))
    return stack(imgs, y[idx])


def _svhn_image(rng, k):
    img = g.background(rng, ["solid", "gradient", "photo"][rng.integers(3)])
    d = ImageDraw.Draw(img)
    size = int(rng.integers(36, 48))
    fg = g._rand_color(rng)
    cx, cy = S / 2 + rng.uniform(-3, 3), S / 2 + rng.uniform(-3, 3)
    stroke = int(rng.integers(0, 2))
    for side in (-1, 1):  # neighbouring digits of the house number, partly cut off
        if rng.random() < 0.7:
            g.render_printed(
                d,
                str(rng.integers(10)),
                cx + side * size * rng.uniform(0.65, 0.8),
                cy,
                size,
                fg,
                stroke,
            )
    g.render_printed(d, str(k), cx, cy, size, fg, stroke)
    return g._finish(rng, img, blur=rng.uniform(0, 0.8), noise=5, bright=(0.7, 1.1))


def gen_svhn(rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """SVHN stand-in: a printed digit (the label) between partly cut-off neighbours, on a solid,
    gradient or photo background, blurred, noised, brightness 0.7-1.1. Returns (uint8 [n, 32, 32,
    3], int64 [n]), 10 balanced labels; `split` is unused (the rng makes the splits differ)."""
    return per_label(rng, n, 10, _svhn_image)


def _gtsrb_image(rng, k):
    img = g.photo_crop(rng)
    r = rng.uniform(14, 26)
    cx, cy = S / 2 + rng.uniform(-5, 5), S / 2 + rng.uniform(-5, 5)
    g.draw_sign(img, int(k), cx, cy, r, rng)
    return g._finish(rng, img, blur=rng.uniform(0, 1.5), noise=5, bright=(0.35, 1.15))


def gen_gtsrb(rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """GTSRB stand-in: one of the 10 generators.SIGNS on a photo crop, blurred, noised, brightness
    0.35-1.15. Returns (uint8 [n, 32, 32, 3], int64 [n]), balanced labels; `split` is unused."""
    return per_label(rng, n, len(g.SIGNS), _gtsrb_image)


def _dtd_image(rng, k):
    c0, c1 = g._rand_color(rng), g._rand_color(rng)
    img = g.texture(
        rng,
        g.DTD_KINDS[k],
        c0,
        c1,
        period=rng.uniform(10, 22),
        angle=rng.uniform(0, math.pi),
        jitter=0.2,
    )
    return g._finish(rng, img, blur=rng.uniform(0, 1.0), noise=10)


def gen_dtd(rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """DTD stand-in: one of the 10 generators.DTD_KINDS textures in two random colours (period 10-22
    pixels, random angle, jittered mask). Returns (uint8 [n, 32, 32, 3], int64 [n]), balanced
    labels;
    `split` is unused."""
    return per_label(rng, n, len(g.DTD_KINDS), _dtd_image)


EUROSAT = [
    "annual crop land",
    "forest",
    "brushland or shrubland",
    "highway or road",
    "industrial buildings",
    "pasture land",
    "permanent crop land",
    "residential buildings",
    "river",
    "lake or sea",
]


def aerial(rng, k):
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    if k == 0:  # annual crop: patches of striped fields
        a = np.zeros((S, S, 3))
        cut = rng.integers(16, 48)
        for sl, ang in [
            ((slice(0, cut), slice(None)), rng.uniform(0, math.pi)),
            ((slice(cut, S), slice(None)), rng.uniform(0, math.pi)),
        ]:
            u = (xx * math.cos(ang) + yy * math.sin(ang)) / rng.uniform(3, 6)
            m = (np.sin(2 * math.pi * u) > 0).astype(np.float64)
            c0 = g._jitter_color(rng, (120, 150, 60), 30)
            c1 = g._jitter_color(rng, (170, 140, 90), 30)
            a[sl] = g._mix(c0, c1, m)[sl]
    elif k == 1:
        a = g.terrain(rng, "forest")
    elif k == 2:  # brushland: blotches of grass and soil
        t = (g._noise_field(rng, S, 6) > 0.5).astype(np.float64) * 0.7 + 0.3 * g._noise_field(
            rng, S, 2
        )
        a = g._mix(g._jitter_color(rng, (110, 120, 60)), g._jitter_color(rng, (150, 130, 90)), t)
    elif k == 3:  # highway
        a = g.terrain(rng, ["grass", "soil", "sand"][rng.integers(3)])
        im = Image.fromarray(a.astype(np.uint8))
        d = ImageDraw.Draw(im)
        ang = rng.uniform(0, math.pi)
        c, s_ = math.cos(ang) * 60, math.sin(ang) * 60
        cx, cy = rng.uniform(20, 44, 2)
        d.line(
            [(cx - c, cy - s_), (cx + c, cy + s_)],
            fill=g._jitter_color(rng, (110, 110, 110)),
            width=10,
        )
        d.line([(cx - c, cy - s_), (cx + c, cy + s_)], fill=(230, 230, 230), width=1)
        a = np.asarray(im, dtype=np.float64)
    elif k == 4:  # industrial: large grey / white roofs
        im = Image.new("RGB", (S, S), g._jitter_color(rng, (120, 120, 115)))
        d = ImageDraw.Draw(im)
        for _ in range(rng.integers(3, 6)):
            x0, y0 = rng.integers(-10, 50, 2)
            w, h = rng.integers(14, 34, 2)
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=g._jitter_color(rng, (200, 200, 205), 30))
        a = np.asarray(im, dtype=np.float64)
    elif k == 5:  # pasture: smooth light green
        t = g._noise_field(rng, S, 32)
        a = g._mix(g._jitter_color(rng, (120, 180, 80)), g._jitter_color(rng, (150, 200, 100)), t)
    elif k == 6:  # permanent crop: rows of tree dots
        a = g.terrain(rng, "soil")
        im = Image.fromarray(a.astype(np.uint8))
        d = ImageDraw.Draw(im)
        step = rng.uniform(6, 10)
        col = g._jitter_color(rng, (40, 110, 40))
        off = rng.uniform(0, step)
        for yv in np.arange(off, S, step):
            for xv in np.arange(off, S, step * 0.8):
                d.ellipse([xv - 2.5, yv - 2.5, xv + 2.5, yv + 2.5], fill=col)
        a = np.asarray(im, dtype=np.float64)
    elif k == 7:  # residential: dense small roofs along streets
        im = Image.new("RGB", (S, S), g._jitter_color(rng, (90, 130, 70)))
        d = ImageDraw.Draw(im)
        step = int(rng.integers(9, 13))
        for yv in range(0, S, step):
            for xv in range(0, S, step):
                roof = g._jitter_color(
                    rng, [(170, 70, 50), (120, 120, 130), (200, 190, 170)][rng.integers(3)]
                )
                d.rectangle([xv + 1, yv + 1, xv + step - 4, yv + step - 4], fill=roof)
        a = np.asarray(im, dtype=np.float64)
    elif k == 8:  # river through land
        a = g.terrain(rng, ["grass", "forest", "soil"][rng.integers(3)])
        ang = rng.uniform(0, math.pi)
        u = (xx - 32) * math.cos(ang) + (yy - 32) * math.sin(ang)
        v = -(xx - 32) * math.sin(ang) + (yy - 32) * math.cos(ang)
        dist = np.abs(v - 6 * np.sin(u / rng.uniform(6, 10)))
        m = (dist < rng.uniform(4, 7)).astype(np.float64)
        a = a * (1 - m[..., None]) + g.terrain(rng, "water") * m[..., None]
    else:  # lake or sea
        a = g.terrain(rng, "water")
        if rng.random() < 0.5:
            ang = rng.uniform(0, 2 * math.pi)
            m = (
                (xx - 32) * math.cos(ang) + (yy - 32) * math.sin(ang) > rng.uniform(14, 26)
            ).astype(np.float64)
            a = a * (1 - m[..., None]) + g.terrain(rng, "sand") * m[..., None]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def gen_eurosat(rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """EuroSAT stand-in: top-down land-cover views of the 10 EUROSAT classes (fields, forest, roads,
    roofs, water...). Returns (uint8 [n, 32, 32, 3], int64 [n]), balanced labels; `split` is unused.
    """
    labels = balanced(rng, n, 10)
    imgs = [
        g._finish(rng, aerial(rng, int(k)), blur=rng.uniform(0, 0.8), noise=6, bright=(0.8, 1.1))
        for k in labels
    ]
    return stack(imgs, labels)


SCENES = [
    "beach",
    "desert",
    "forest",
    "mountain",
    "ocean",
    "snowfield",
    "night sky",
    "city skyline",
    "field",
    "lake",
]


def scene(rng, k, flat=False):
    """Side-view landscape. flat=True: the pool's simplified style (flat colour bands, no
    objects)."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    h = rng.uniform(22, 36)  # horizon
    tex = (
        (lambda name: g.terrain(rng, name))
        if not flat
        else (
            lambda name: (
                np.ones((S, S, 3)) * np.asarray(g._jitter_color(rng, g.TERRAIN[name][1], 15))
            )
        )
    )
    sky = tex("sky")
    if k == 6:
        sky = np.ones((S, S, 3)) * np.asarray(g._jitter_color(rng, (15, 20, 50), 10))
    a = sky.copy()
    below = yy > h + (0 if flat else 2 * np.sin(xx / rng.uniform(5, 12)))
    ground = {
        0: "water",
        1: "sand",
        2: "forest",
        3: "rock",
        4: "water",
        5: "snow",
        6: "forest",
        7: "rock",
        8: "grass",
        9: "water",
    }[k]
    gr = tex(ground)
    if k == 0:  # beach: water band then sand
        sand = tex("sand")
        a = np.where(below[..., None], gr, a)
        a = np.where((yy > h + rng.uniform(8, 14))[..., None], sand, a)
    elif k == 1 and not flat:
        dune = yy > h + 5 * np.sin(xx / rng.uniform(6, 10) + rng.uniform(0, 6))
        a = np.where(dune[..., None], gr, a)
    elif k == 6:
        a = np.where(below[..., None], gr * 0.25, a)
    else:
        a = np.where(below[..., None], gr, a)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if flat:
        return im
    d = ImageDraw.Draw(im)
    if k == 2:  # trees
        for _ in range(rng.integers(6, 12)):
            x, b = rng.uniform(0, S), rng.uniform(h, S)
            hh = rng.uniform(10, 22)
            d.polygon(
                [(x, b - hh), (x - hh / 3, b), (x + hh / 3, b)],
                fill=g._jitter_color(rng, (20, 80, 30)),
            )
    elif k == 3:  # peaks
        for _ in range(rng.integers(1, 3)):
            x, hh = rng.uniform(5, 59), rng.uniform(18, 30)
            d.polygon(
                [(x, h - hh), (x - hh, h + 2), (x + hh, h + 2)],
                fill=g._jitter_color(rng, (110, 105, 100)),
            )
            d.polygon(
                [(x, h - hh), (x - hh * 0.3, h - hh * 0.7), (x + hh * 0.3, h - hh * 0.7)],
                fill=(245, 245, 250),
            )
    elif k == 6:  # stars and moon
        for _ in range(rng.integers(8, 20)):
            x, y = rng.uniform(0, S), rng.uniform(0, h)
            d.ellipse([x - 0.8, y - 0.8, x + 0.8, y + 0.8], fill=(250, 250, 220))
        if rng.random() < 0.7:
            x, y = rng.uniform(8, 56), rng.uniform(4, h - 6)
            d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(240, 240, 210))
    elif k == 7:  # buildings
        x = rng.uniform(-5, 3)
        while x < S:
            w, hh = rng.uniform(6, 14), rng.uniform(12, 34)
            col = g._jitter_color(rng, (80, 80, 95), 25)
            d.rectangle([x, h - hh, x + w, S], fill=col)
            for wy in np.arange(h - hh + 2, S - 2, 4):
                for wx in np.arange(x + 2, x + w - 2, 3.5):
                    if rng.random() < 0.6:
                        d.rectangle([wx, wy, wx + 1, wy + 1], fill=(240, 220, 120))
            x += w + rng.uniform(0, 3)
    elif k == 8:  # crop rows / flowers
        for _ in range(rng.integers(10, 30)):
            x, y = rng.uniform(0, S), rng.uniform(h + 2, S)
            d.ellipse([x - 1, y - 1, x + 1, y + 1], fill=g._jitter_color(rng, (230, 200, 40), 30))
    elif k == 9:  # tree line on the far shore
        for x in np.arange(rng.uniform(-4, 0), S, rng.uniform(3, 6)):
            hh = rng.uniform(4, 9)
            d.polygon(
                [(x, h - hh), (x - 3, h), (x + 3, h)], fill=g._jitter_color(rng, (25, 80, 30))
            )
    elif k == 4:  # waves
        for _ in range(rng.integers(3, 8)):
            y, x = rng.uniform(h + 3, S), rng.uniform(0, S)
            d.line([(x - 6, y), (x + 6, y)], fill=(220, 235, 250), width=1)
    elif k == 5:  # snowy hills
        pass
    return im


def gen_sun397(rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """SUN397 stand-in: side-view landscapes of the 10 SCENES (sky, horizon, ground and objects).
    Returns (uint8 [n, 32, 32, 3], int64 [n]), balanced labels; `split` is unused."""
    labels = balanced(rng, n, len(SCENES))
    imgs = [
        g._finish(rng, scene(rng, int(k)), blur=rng.uniform(0, 0.8), noise=6, bright=(0.7, 1.15))
        for k in labels
    ]
    return stack(imgs, labels)


# name -> (generator, classnames, templates). Templates follow the real tasks' but stay short.
EVAL_TASKS = {
    "SUN397": (gen_sun397, SCENES, ["a photo of a {c}.", "a photo of the {c}."]),
    "EuroSAT": (
        gen_eurosat,
        EUROSAT,
        ["a centered satellite photo of {c}.", "a satellite photo of the {c}."],
    ),
    "SVHN": (gen_svhn, [str(i) for i in range(10)], ['a photo of the number: "{c}".']),
    "GTSRB": (gen_gtsrb, g.SIGNS, ['a photo of a "{c}" traffic sign.', 'a "{c}" traffic sign.']),
    "MNIST": (gen_mnist, [str(i) for i in range(10)], ['a photo of the number: "{c}".']),
    "DTD": (
        gen_dtd,
        g.DTD_KINDS,
        ["a photo of a {c} texture.", "a photo of a {c} pattern.", "a photo of the {c} texture."],
    ),
}
CANONICAL = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
