"""The one glyph renderer (benchmarks/glyphs.py): deterministic, labelled, fails clearly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import glyphs  # noqa: E402


def test_same_generator_same_glyphs_and_labels_cycle() -> None:
    a, ya = glyphs.render("AB", glyphs.TRAIN_FONTS, 12, np.random.default_rng(3))
    b, yb = glyphs.render("AB", glyphs.TRAIN_FONTS, 12, np.random.default_rng(3))
    assert a.shape == (12, 1, 28, 28) and a.dtype == np.float32
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert ya.tolist() == [0, 1] * 6
    assert 0.0 <= a.min() and a.max() <= 1.0
    # every glyph has ink, and two draws of one character differ (size, offset, turn)
    assert (a.reshape(12, -1).max(axis=1) > 0.5).all()
    assert not np.array_equal(a[0], a[2])


def test_held_out_fonts_render_and_differ_from_training_fonts() -> None:
    assert not set(glyphs.TRAIN_FONTS) & set(glyphs.HELD_OUT_FONTS)
    x, _ = glyphs.render(glyphs.UPPER, glyphs.HELD_OUT_FONTS, 26, np.random.default_rng(0),
                         size=16)
    assert x.shape == (26, 1, 16, 16)


def test_a_missing_font_names_the_package() -> None:
    with pytest.raises(FileNotFoundError, match="fonts-dejavu"):
        glyphs.render("A", ["NoSuchFont.ttf"], 1, np.random.default_rng(0))
