"""Rendered glyphs: characters drawn with Pillow from the fonts Debian ships (DejaVu).

One renderer for every benchmark that needs glyphs (the detection suite's ``glyphs`` family and
``benchmarks/classifier_ood.py``). Nothing is downloaded: the fonts come from Debian's
``fonts-dejavu-core`` and ``fonts-dejavu-extra`` packages (``scripts/test.sh`` installs them when
missing). Each glyph is drawn white on black at a random size, offset and small rotation, so two
draws of one character in one font differ; the result depends only on the generator passed in.

>>> rng = np.random.default_rng(0)
>>> x, y = render("ABC", TRAIN_FONTS, 30, rng)
>>> x.shape, x.dtype, sorted(set(y.tolist()))
((30, 1, 28, 28), dtype('float32'), [0, 1, 2])
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

__all__ = ["FONT_DIR", "HELD_OUT_FONTS", "TRAIN_FONTS", "UPPER", "DIGITS", "LOWER",
           "PUNCTUATION", "font_path", "render"]

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")

# Upright faces in training; oblique, italic, condensed-serif and light faces held out.
TRAIN_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
               "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansCondensed.ttf",
               "DejaVuSansCondensed-Bold.ttf")
HELD_OUT_FONTS = ("DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono-Oblique.ttf",
                  "DejaVuSerifCondensed-BoldItalic.ttf", "DejaVuSans-ExtraLight.ttf")

UPPER = string.ascii_uppercase
LOWER = string.ascii_lowercase
DIGITS = string.digits
PUNCTUATION = "!?#$%&*+/<=>@"


def font_path(name: str) -> Path:
    """The path of one DejaVu font, or a ``FileNotFoundError`` naming the package to install."""
    path = FONT_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"font {path} not found: install Debian's fonts-dejavu-core and fonts-dejavu-extra "
            "(apt-get install fonts-dejavu-core fonts-dejavu-extra)")
    return path


def render(chars: str, fonts: tuple[str, ...] | list[str], n: int, rng: np.random.Generator,
           size: int = 28, rotation: float = 8.0,
           angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` glyphs ``(n, 1, size, size)`` float32 in [0, 1] and labels (indices into ``chars``).

    Characters and fonts cycle evenly over the rows (row ``i`` draws ``chars[i % len(chars)]`` in
    a font drawn at random); each glyph's height is 55–80 % of ``size``, its centre jitters by up
    to 10 % and it turns by a uniform angle in ``angle ± rotation`` degrees.
    """
    from PIL import Image, ImageDraw, ImageFont

    if n < 0 or not chars or not fonts:
        raise ValueError("render needs n >= 0, at least one character and one font")
    paths = [str(font_path(f)) for f in fonts]
    big = size * 4  # draw large, then downsample: smooth edges at every size
    cache: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}
    x = np.empty((n, 1, size, size), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    for i in range(n):
        label = i % len(chars)
        f = int(rng.integers(len(paths)))
        px = int(big * rng.uniform(0.55, 0.80))
        key = (f, px)
        if key not in cache:
            cache[key] = ImageFont.truetype(paths[f], px)
        im = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(im)
        cx = big / 2 + big * rng.uniform(-0.1, 0.1)
        cy = big / 2 + big * rng.uniform(-0.1, 0.1)
        draw.text((cx, cy), chars[label], fill=255, font=cache[key], anchor="mm")
        turn = angle + rng.uniform(-rotation, rotation)
        if turn:
            im = im.rotate(turn, resample=Image.Resampling.BILINEAR, center=(cx, cy))
        im = im.resize((size, size), resample=Image.Resampling.BOX)
        x[i, 0] = np.asarray(im, dtype=np.float32) / 255.0
        y[i] = label
    return x, y
