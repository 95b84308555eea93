"""The detection benchmark's data families; everything ships offline (nothing is downloaded).

Every family gives flattened float32 inputs ``(N, dim)`` split into train / validation (for
calibration) / held-out test, and named OOD sets, each tagged ``near`` or ``far``:

- ``digits``: scikit-learn's 8×8 digits in [0, 1], 0–4 in-distribution; 5–9 near-OOD; shifted,
  blurred, low-contrast and inverted digits; constant, smooth gradients, uniform noise, sample
  photo patches.
- ``cancer``: breast-cancer tabular features, standardised on the benign training rows;
  malignant near-OOD; benign rows with scrambled features, constant (the training mean),
  uniform noise over the training range.
- ``wine``: wine, classes 0 and 1 in-distribution, class 2 OOD (130 in-distribution rows: too
  few for calibration at its defaults — the benchmark records that outcome).
- ``patches``: 16×16 grayscale patches of bundled photos (scikit-learn's two sample images and
  scikit-image's bundled camera, astronaut, coffee, chelsea), train / validation / test cropped
  from disjoint column bands of every photo; near-OOD: other bundled grayscale photos (coins,
  moon, clock); textures (brick, grass, gravel), text; low-complexity: constant, smooth
  gradients, blurred and low-contrast test patches; uniform noise.
- ``signals``: 1-D signals (length 64) generated here: a sum of 1–3 low-frequency sinusoids
  plus noise; near-OOD: higher frequencies, square waves, chirps; far: constant, linear ramps,
  low-amplitude signals, spikes, uniform noise.

- ``natural``: 16×16 grayscale crops of natural photographs (:data:`NATURAL_PHOTOS`), disjoint
  column bands for train / validation / test; every OOD set is another *kind* of image
  (:data:`NATURAL_OOD`: textures, documents, astronomy, microscopy, coins and clocks), raw and
  ``_matched``: each crop's mean and standard deviation set to those of a random
  in-distribution test crop, so a model-free brightness / contrast score cannot separate it.
- ``glyphs``: 16×16 glyphs rendered by ``benchmarks/glyphs.py``; uppercase letters in the
  training fonts in-distribution; OOD: uppercase in held-out fonts, digits, lowercase,
  punctuation, uppercase turned by 90° and by 180°.

Calibration builds its synthetic outliers from the validation rows only. Every family records
the source of each split and OOD set in ``Family.sources`` and :func:`check_disjoint` refuses a
family whose proxy pool (validation) shares a source image or a row with any OOD set.

Every model also gets the two "trivially far" sets (added by :func:`add_trivial`): a constant
``1e3`` input and ``N(0, 10)`` noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FAMILIES", "Family", "add_trivial", "check_disjoint", "load_family"]


@dataclass(frozen=True, eq=False)
class Family:
    """One data family, flattened to ``(N, dim)`` float32."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    ood: dict[str, tuple[str, np.ndarray]]  # name -> ("near" | "far", inputs)
    image_shape: tuple[int, ...]  # (H, W) or (L,): the conv models' view of a row
    output: str  # "sigmoid" (inputs in [0, 1]) or "linear" (standardised)
    # split or OOD set name -> the source images (or rendered character / font sets) it is cut
    # from; "val" is the pool calibration's synthetic outliers are built from
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _split(n: int, fractions: tuple[float, float], rng: np.random.Generator) -> list[np.ndarray]:
    ind = rng.permutation(n)
    a, b = int(n * fractions[0]), int(n * (fractions[0] + fractions[1]))
    return [ind[:a], ind[a:b], ind[b:]]


def _blur(img: np.ndarray) -> np.ndarray:
    """3×3 box blur of ``(N, H, W)`` with edge padding (numpy only)."""
    p = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = img.shape[1:]
    out = np.zeros(img.shape, dtype=img.dtype)
    for i in range(3):
        for j in range(3):
            out += p[:, i : i + h, j : j + w]
    return out / 9.0


def _gradients(n: int, shape: tuple[int, int], rng: np.random.Generator, lo: float = 0.0,
               hi: float = 1.0) -> np.ndarray:
    """Smooth linear ramps of random direction and range within [lo, hi]."""
    h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    ang = rng.uniform(0, 2 * np.pi, n)
    ramp = np.cos(ang)[:, None, None] * xx + np.sin(ang)[:, None, None] * yy  # [-√2, √2]
    a = rng.uniform(lo, hi, n)[:, None, None]
    b = rng.uniform(lo, hi, n)[:, None, None]
    return a + (b - a) * (ramp + np.sqrt(2)) / (2 * np.sqrt(2))


def _low_contrast(x: np.ndarray, factor: float = 0.2) -> np.ndarray:
    m = x.mean(axis=1, keepdims=True)
    return m + factor * (x - m)


def digits(seed: int) -> Family:
    from sklearn.datasets import load_digits

    from oodguard.calibration.data import sample_image_patches

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target
    rng = np.random.default_rng(seed)
    ind = np.flatnonzero(y <= 4)
    tr, va, te = (ind[s] for s in _split(len(ind), (0.4, 0.35), rng))
    img_te = x[te].reshape(-1, 8, 8)
    n = 300
    shifted = np.roll(img_te, 2, axis=2).reshape(len(te), 64)
    ood = {
        "digits_5_9": ("near", x[y >= 5]),
        "shifted_digits": ("near", shifted),
        "blurred_digits": ("far", _blur(img_te).reshape(len(te), 64)),
        "low_contrast_digits": ("far", _low_contrast(x[te])),
        "inverted_digits": ("far", 1.0 - x[te]),
        "constant": ("far", np.repeat(rng.uniform(0, 1, (n, 1)), 64, axis=1)),
        "smooth_gradients": ("far", _gradients(n, (8, 8), rng).reshape(n, 64)),
        "uniform_noise": ("far", rng.uniform(0, 1, (n, 64))),
        "photo_patches": ("far", sample_image_patches(n, seed=seed).reshape(n, 64)),
    }
    return Family("digits", _f32(x[tr]), _f32(x[va]), _f32(x[te]),
                  {k: (kind, _f32(v)) for k, (kind, v) in ood.items()}, (8, 8), "sigmoid")


def _tabular(name: str, x_in: np.ndarray, x_out: np.ndarray, seed: int,
             fractions: tuple[float, float]) -> Family:
    rng = np.random.default_rng(seed)
    tr, va, te = _split(len(x_in), fractions, rng)
    mu, sd = x_in[tr].mean(0), x_in[tr].std(0) + 1e-8
    z = (x_in - mu) / sd
    zo = (x_out - mu) / sd
    lo, hi = z[tr].min(0), z[tr].max(0)
    n = 200
    scrambled = np.stack([rng.permutation(z[te][:, j]) for j in range(z.shape[1])], axis=1)
    ood = {
        f"{name}_ood_class": ("near", zo),
        "scrambled_features": ("near", scrambled),
        "constant_mean": ("far", np.zeros((n, z.shape[1])) + rng.normal(0, 0.01, (n, z.shape[1]))),
        "uniform_noise": ("far", rng.uniform(lo, hi, (n, z.shape[1]))),
    }
    return Family(name, _f32(z[tr]), _f32(z[va]), _f32(z[te]),
                  {k: (kind, _f32(v)) for k, (kind, v) in ood.items()}, (z.shape[1],), "linear")


def cancer(seed: int) -> Family:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    # target 1 = benign (357 rows), 0 = malignant (212)
    return _tabular("cancer", d.data[d.target == 1], d.data[d.target == 0], seed, (0.3, 0.5))


def wine(seed: int) -> Family:
    from sklearn.datasets import load_wine

    d = load_wine()
    return _tabular("wine", d.data[d.target <= 1], d.data[d.target == 2], seed, (0.3, 0.5))


_SIZE = 16


def _gray(name: str) -> np.ndarray:
    """A bundled photo as float32 grayscale in [0, 1]."""
    if name in ("china.jpg", "flower.jpg"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(name).astype(np.float32).mean(axis=2) / 255.0
    import skimage.data

    im = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    if im.ndim == 3:
        im = im[..., :3].mean(axis=2)
    return im / (255.0 if im.max() > 1.0 else 1.0)


def _crops(images: list[np.ndarray], n: int, band: tuple[float, float],
           rng: np.random.Generator) -> np.ndarray:
    """``n`` 16×16 crops, drawn evenly from the images, inside column band ``band`` (fractions
    of the width) so that the train / validation / test bands never overlap."""
    out = np.empty((n, _SIZE, _SIZE), dtype=np.float32)
    for i in range(n):
        im = images[i % len(images)]
        c0, c1 = int(band[0] * im.shape[1]), int(band[1] * im.shape[1]) - _SIZE
        r = rng.integers(0, im.shape[0] - _SIZE)
        c = rng.integers(c0, c1)
        out[i] = im[r : r + _SIZE, c : c + _SIZE]
    return out


PHOTOS = ("china.jpg", "flower.jpg", "camera", "astronaut", "coffee", "chelsea")


def patches(seed: int, n_train: int = 1200) -> Family:
    rng = np.random.default_rng(seed)
    photos = [_gray(p) for p in PHOTOS]
    train = _crops(photos, n_train, (0.0, 0.6), rng)
    val = _crops(photos, 600, (0.6, 0.8), rng)
    test = _crops(photos, 600, (0.8, 1.0), rng)
    n = 300
    other = [_gray(p) for p in ("coins", "moon", "clock")]
    textures = [_gray(p) for p in ("brick", "grass", "gravel")]
    text = [_gray(p) for p in ("text", "page")]
    ood = {
        "other_photos": ("near", _crops(other, n, (0.0, 1.0), rng)),
        "textures": ("near", _crops(textures, n, (0.0, 1.0), rng)),
        "text": ("far", _crops(text, n, (0.0, 1.0), rng)),
        "blurred_patches": ("far", _blur(_blur(test[:n]))),
        "low_contrast_patches": ("far", _low_contrast(test[:n].reshape(n, -1))),
        "constant": ("far", np.repeat(rng.uniform(0, 1, (n, 1)), _SIZE * _SIZE, axis=1)),
        "smooth_gradients": ("far", _gradients(n, (_SIZE, _SIZE), rng)),
        "uniform_noise": ("far", rng.uniform(0, 1, (n, _SIZE * _SIZE))),
    }
    dim = _SIZE * _SIZE
    return Family("patches", _f32(train.reshape(-1, dim)), _f32(val.reshape(-1, dim)),
                  _f32(test.reshape(-1, dim)),
                  {k: (kind, _f32(v.reshape(len(v), dim))) for k, (kind, v) in ood.items()},
                  (_SIZE, _SIZE), "sigmoid")


_LEN = 64


def _sines(n: int, rng: np.random.Generator, fmin: float, fmax: float) -> np.ndarray:
    t = np.linspace(0, 1, _LEN)
    out = np.zeros((n, _LEN))
    k = rng.integers(1, 4, n)
    for j in range(3):
        on = (j < k)[:, None]
        f = rng.uniform(fmin, fmax, (n, 1))
        ph = rng.uniform(0, 2 * np.pi, (n, 1))
        amp = rng.uniform(0.05, 0.15, (n, 1))
        out += on * amp * np.sin(2 * np.pi * f * t + ph)
    return 0.5 + out + rng.normal(0, 0.02, (n, _LEN))


def signals(seed: int, n_train: int = 1200) -> Family:
    rng = np.random.default_rng(seed)
    train, val, test = (_sines(m, rng, 1.0, 4.0) for m in (n_train, 600, 900))
    n = 300
    t = np.linspace(0, 1, _LEN)
    f = rng.uniform(1, 4, (n, 1))
    ph = rng.uniform(0, 2 * np.pi, (n, 1))
    chirp = 0.5 + 0.2 * np.sin(2 * np.pi * (f * t + 4 * t**2) + ph)
    spikes = 0.5 + rng.normal(0, 0.02, (n, _LEN))
    spikes[np.arange(n), rng.integers(0, _LEN, n)] += 0.45
    ramp_a, ramp_b = rng.uniform(0.2, 0.8, (n, 1)), rng.uniform(0.2, 0.8, (n, 1))
    ood = {
        "high_frequency": ("near", _sines(n, rng, 8.0, 14.0)),
        "square_waves": ("near", 0.5 + 0.15 * np.sign(np.sin(2 * np.pi * f * t + ph))),
        "chirps": ("near", chirp),
        "spikes": ("near", spikes),
        "constant": ("far", np.repeat(rng.uniform(0.3, 0.7, (n, 1)), _LEN, axis=1)),
        "linear_ramps": ("far", ramp_a + (ramp_b - ramp_a) * t),
        "low_amplitude": ("far", _low_contrast(test[:n], 0.2)),
        "uniform_noise": ("far", rng.uniform(0.2, 0.8, (n, _LEN))),
    }
    return Family("signals", _f32(train), _f32(val), _f32(test),
                  {k: (kind, _f32(v)) for k, (kind, v) in ood.items()}, (_LEN,), "sigmoid")


NATURAL_PHOTOS = ("china.jpg", "flower.jpg", "camera", "astronaut", "coffee", "chelsea",
                  "rocket")
NATURAL_OOD = {
    "textures": ("brick", "grass", "gravel"),
    "documents": ("text", "page"),
    "astronomy": ("hubble_deep_field", "moon"),
    "microscopy": ("cell", "immunohistochemistry", "microaneurysms", "retina"),
    "coins_clock": ("coins", "clock"),
}


def _match_moments(x: np.ndarray, ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row of ``x`` standardised, then given the mean and standard deviation of a random
    row of ``ref`` (clipped to [0, 1]): brightness and contrast look in-distribution."""
    pick = ref[rng.integers(0, len(ref), len(x))]
    z = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)
    return np.clip(pick.mean(axis=1, keepdims=True) + z * pick.std(axis=1, keepdims=True),
                   0.0, 1.0)


def natural(seed: int, n_train: int = 1400) -> Family:
    rng = np.random.default_rng(seed)
    photos = [_gray(p) for p in NATURAL_PHOTOS]
    dim = _SIZE * _SIZE
    train = _crops(photos, n_train, (0.0, 0.6), rng).reshape(-1, dim)
    val = _crops(photos, 600, (0.6, 0.8), rng).reshape(-1, dim)
    test = _crops(photos, 600, (0.8, 1.0), rng).reshape(-1, dim)
    n = 300
    ood: dict[str, tuple[str, np.ndarray]] = {}
    sources: dict[str, tuple[str, ...]] = {s: NATURAL_PHOTOS for s in ("train", "val", "test")}
    for name, images in NATURAL_OOD.items():
        raw = _crops([_gray(p) for p in images], n, (0.0, 1.0), rng).reshape(n, dim)
        ood[name] = ("near", raw)
        ood[f"{name}_matched"] = ("near", _match_moments(raw, test, rng))
        sources[name] = sources[f"{name}_matched"] = images
    return Family("natural", _f32(train), _f32(val), _f32(test),
                  {k: (kind, _f32(v)) for k, (kind, v) in ood.items()}, (_SIZE, _SIZE),
                  "sigmoid", sources)


def glyph_family(seed: int, n_train: int = 4000) -> Family:
    import glyphs as g

    rng = np.random.default_rng(seed)
    dim = _SIZE * _SIZE

    def draw(chars: str, fonts: tuple[str, ...], n: int, angle: float = 0.0) -> np.ndarray:
        return g.render(chars, fonts, n, rng, size=_SIZE, angle=angle)[0].reshape(n, dim)

    train, val, test = (draw(g.UPPER, g.TRAIN_FONTS, m) for m in (n_train, 800, 800))
    n = 300
    ood = {
        "held_out_fonts": ("near", draw(g.UPPER, g.HELD_OUT_FONTS, n)),
        "digits": ("near", draw(g.DIGITS, g.TRAIN_FONTS, n)),
        "lowercase": ("near", draw(g.LOWER, g.TRAIN_FONTS, n)),
        "punctuation": ("near", draw(g.PUNCTUATION, g.TRAIN_FONTS, n)),
        "rotated_90": ("near", draw(g.UPPER, g.TRAIN_FONTS, n, angle=90.0)),
        "rotated_180": ("far", draw(g.UPPER, g.TRAIN_FONTS, n, angle=180.0)),
    }
    upper = tuple(f"{c}@{f}" for c in g.UPPER for f in g.TRAIN_FONTS)
    # a rotated letter is drawn from the same character and font as the pool, so its source is
    # the rendering itself: its rows are checked for overlap, not its (shared) character set
    sources = {"train": upper, "val": upper, "test": upper,
               "held_out_fonts": tuple(f"{c}@{f}" for c in g.UPPER for f in g.HELD_OUT_FONTS),
               "digits": tuple(f"{c}@{f}" for c in g.DIGITS for f in g.TRAIN_FONTS),
               "lowercase": tuple(f"{c}@{f}" for c in g.LOWER for f in g.TRAIN_FONTS),
               "punctuation": tuple(f"{c}@{f}" for c in g.PUNCTUATION for f in g.TRAIN_FONTS),
               "rotated_90": ("rotated 90°",), "rotated_180": ("rotated 180°",)}
    return Family("glyphs", _f32(train), _f32(val), _f32(test),
                  {k: (kind, _f32(v)) for k, (kind, v) in ood.items()}, (_SIZE, _SIZE),
                  "sigmoid", sources)


def check_disjoint(fam: Family) -> None:
    """Refuse a family whose proxy pool (the validation rows, from which calibration builds its
    synthetic outliers) shares a source (``Family.sources``) or an identical row with any OOD
    set. ``ValueError`` names the set. Constant rows carry no image (a black background crop and
    a contrast-matched crop given a flat crop's moments are both all zero) and are not compared."""
    pool = set(fam.sources.get("val", ()))
    rows = {r.tobytes() for r in fam.val if r.min() < r.max()}
    for name, (_, x) in fam.ood.items():
        shared = pool & set(fam.sources.get(name, ()))
        if shared:
            raise ValueError(f"family {fam.name!r}: OOD set {name!r} shares the sources "
                             f"{sorted(shared)[:5]} with the proxy pool (validation rows)")
        if any(r.tobytes() in rows for r in np.asarray(x, dtype=np.float32)):
            raise ValueError(f"family {fam.name!r}: OOD set {name!r} repeats a validation row, "
                             "from which calibration's synthetic outliers are built")


FAMILIES = {"digits": digits, "cancer": cancer, "wine": wine, "patches": patches,
            "signals": signals, "natural": natural, "glyphs": glyph_family}


def load_family(name: str, seed: int = 0) -> Family:
    """Load family ``name`` (one of :data:`FAMILIES`); the data depend only on ``seed``."""
    if name not in FAMILIES:
        raise ValueError(f"unknown data family {name!r}; expected one of {sorted(FAMILIES)}")
    fam = FAMILIES[name](seed)
    check_disjoint(fam)
    return fam


def add_trivial(fam: Family, seed: int, n: int = 200) -> dict[str, tuple[str, np.ndarray]]:
    """The family's OOD sets plus the two trivially far ones every model must flag."""
    rng = np.random.default_rng(seed + 10_000)
    dim = fam.train.shape[1]
    return {**fam.ood,
            "trivial_constant_1e3": ("far", np.full((n, dim), 1e3, dtype=np.float32)),
            "trivial_normal_sd10": ("far", _f32(rng.normal(0.0, 10.0, (n, dim))))}
