"""Synthetic outliers and the greedy feature/direction selection."""

from __future__ import annotations

import numpy as np
import pytest

from oodguard.calibration.selection import (
    DEFAULT_PROXY_KINDS,
    PROXY_KINDS,
    make_proxies,
    select_features,
)


def _x(n: int = 40, shape: tuple[int, ...] = (4, 6)) -> np.ndarray:
    return np.random.default_rng(0).uniform(0.1, 0.9, size=(n, *shape)).astype(np.float32)


def test_proxies_shapes_order_and_seed() -> None:
    x = _x()
    p = make_proxies(x)
    assert p.shape == (len(DEFAULT_PROXY_KINDS) * 40, 4, 6) and p.dtype == np.float32
    np.testing.assert_array_equal(p, make_proxies(x))  # seeded
    assert not np.array_equal(p, make_proxies(x, seed=1))
    one = make_proxies(x, kinds=["constant"])
    assert one.shape == (40, 4, 6)
    with pytest.raises(ValueError, match=r"unknown proxy kinds \['sparkle'\]; choose from"):
        make_proxies(x, kinds=["sparkle"])


def _kind(kind: str, x: np.ndarray) -> np.ndarray:
    return make_proxies(x, kinds=[kind]).reshape(len(x), -1).astype(np.float64)


def test_each_proxy_kind_is_what_it_says() -> None:
    x = _x()
    flat = x.reshape(len(x), -1).astype(np.float64)
    lo, hi = flat.min(), flat.max()
    # permutations keep each input's values
    for kind in ("permute", "patch_shuffle"):
        np.testing.assert_allclose(np.sort(_kind(kind, x), 1), np.sort(flat, 1), rtol=1e-6)
    c = _kind("constant", x)
    assert np.ptp(c, axis=1).max() == 0 and c.min() >= lo - 1e-6 and c.max() <= hi + 1e-6
    g = _kind("gradient", x)
    np.testing.assert_allclose(np.diff(g, 2, axis=1), 0, atol=1e-5)  # linear ramps
    # contrast shrinks each input's spread to 10–40 %, keeping its mean
    ratio = _kind("contrast", x).std(1) / flat.std(1)
    assert ratio.min() > 0.1 - 1e-6 and ratio.max() < 0.4 + 1e-6
    np.testing.assert_allclose(_kind("contrast", x).mean(1), flat.mean(1), atol=1e-5)
    # blur lowers total variation; brightness stays in the data's range
    tv = lambda a: np.abs(np.diff(a, axis=1)).sum(1)  # noqa: E731
    assert (tv(_kind("blur", x)) < 0.5 * tv(flat)).all()
    b = _kind("brightness", x)
    assert b.min() >= lo - 1e-6 and b.max() <= hi + 1e-6
    assert (_kind("scaled_noise", x).std() > 2 * flat.std())
    assert set(PROXY_KINDS) >= set(DEFAULT_PROXY_KINDS)


def test_real_shift_proxy_kinds_keep_spectrum_or_values() -> None:
    """``phase`` keeps each input's mean and Fourier amplitudes and changes its phases; the
    finer shuffles keep each input's values and move them; none is in the default set."""
    x = _x(30, (8, 8))
    flat = x.reshape(len(x), -1).astype(np.float64)
    ph = _kind("phase", x)
    np.testing.assert_allclose(ph.mean(1), flat.mean(1), atol=1e-5)
    np.testing.assert_allclose(np.abs(np.fft.rfft(ph, axis=1)), np.abs(np.fft.rfft(flat, axis=1)),
                               atol=1e-4)
    assert np.abs(ph - flat).mean() > 0.1 * flat.std()
    for kind in ("shuffle_16", "shuffle_64"):
        got = _kind(kind, x)
        np.testing.assert_allclose(np.sort(got, 1), np.sort(flat, 1), rtol=1e-6)
        assert (np.abs(got - flat).max(axis=1) > 0).mean() > 0.9
    assert not {"phase", "shuffle_16", "shuffle_64"} & set(DEFAULT_PROXY_KINDS)


def test_selection_learns_feature_and_direction() -> None:
    """Only feature 2 carries the shift, and OOD values are *smaller*: the selection must find
    that direction from the reference set and the combined AUROC must not be diluted."""
    rng = np.random.default_rng(0)
    z_id = rng.normal(size=(500, 4))
    z_ref = rng.normal(size=(500, 4))
    z_ref[:, 2] -= 2.5
    sel = select_features(z_id, z_ref)
    assert sel.selected[0] == 2
    assert sel.direction[2] == -1.0
    assert sel.combined_auroc > 0.95
    assert sel.group_aurocs.shape == (1, 4)


def test_selection_does_not_add_a_feature_that_hurts_one_kind() -> None:
    """Feature 1 separates group B strongly but *reverses* on group A: adding it to feature 0
    would raise the pooled AUROC while costing group A, so it stays out."""
    rng = np.random.default_rng(1)
    n = 600
    z_id = rng.normal(size=(n, 2))
    a = rng.normal(size=(n, 2)) + [2.0, -1.5]
    b = rng.normal(size=(n, 2)) + [1.2, 4.0]
    z_ref = np.concatenate([a, b])
    groups = [np.arange(n), np.arange(n, 2 * n)]
    sel = select_features(z_id, z_ref, groups=groups, two_sided_margin=None)
    assert sel.selected == (0,)
    # pooled alone (one group) takes it
    assert select_features(z_id, z_ref).selected[:2] in ((0, 1), (1, 0))


def test_feature_moved_both_ways_by_different_kinds_is_two_sided() -> None:
    """Feature 1 goes up for group A and down for group B: with a margin it gets direction 0
    (|z|), which separates both groups; without, it gets one sign."""
    rng = np.random.default_rng(2)
    n = 500
    z_id = rng.normal(size=(n, 2))
    a = rng.normal(size=(n, 2)) + [0.0, 3.0]
    b = rng.normal(size=(n, 2)) + [0.0, -3.0]
    z_ref, groups = np.concatenate([a, b]), [np.arange(n), np.arange(n, 2 * n)]
    sel = select_features(z_id, z_ref, groups=groups)
    assert sel.direction[1] == 0.0 and sel.selected == (1,)
    assert sel.combined_auroc > 0.95
    assert select_features(z_id, z_ref, groups=groups, two_sided_margin=None).direction[1] != 0


def test_required_features_stay_and_keep_their_sign() -> None:
    """Feature 0 is useless on the reference set and feature 1 looks inverted: required, both
    stay in; with keep_sign the inverted one becomes two-sided instead of −1."""
    rng = np.random.default_rng(3)
    z_id = rng.normal(size=(400, 3))
    z_ref = rng.normal(size=(400, 3)) + [0.0, -2.0, 3.0]
    sel = select_features(z_id, z_ref, required=[0, 1], keep_sign=[1])
    assert sel.selected[:2] == (0, 1) and 2 in sel.selected
    assert sel.direction[1] == 0.0 and sel.direction[2] == 1.0
    assert select_features(z_id, z_ref, required=[0, 1]).direction[1] == -1.0
    assert select_features(z_id, z_ref).selected[0] == 2
    # every test one-sided: a keep_sign feature keeps its usual direction, never two-sided
    one = select_features(z_id, z_ref, required=[0, 1], keep_sign=[1], two_sided_margin=None)
    assert one.direction[1] == 1.0 and (one.direction != 0).all()
