"""Property tests: whatever is thrown at the guard, it answers with a result or an
InvalidInputError — never another exception."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from oodguard import Guard, InvalidInputError

DTYPES = st.sampled_from(
    [np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_, np.complex64]
)


@pytest.fixture(scope="module")
def guard(bundle):  # type: ignore[no-untyped-def]
    return Guard.load(bundle, registry=None)


SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@settings(max_examples=150, **SETTINGS)
@given(
    arr=hnp.arrays(
        dtype=DTYPES,
        shape=st.one_of(hnp.array_shapes(min_dims=0, max_dims=3, max_side=20),
                        st.tuples(st.integers(0, 5), st.just(16))),
    )
)
def test_any_array_gives_a_result_or_invalid_input(guard, arr) -> None:  # type: ignore[no-untyped-def]
    try:
        r = guard.check(arr)
    except InvalidInputError as err:
        assert err.reason in {"dtype", "rank", "shape", "type"}
        return
    assert arr.dtype.kind == "f" and arr.shape[1:] == (16,)
    assert len(r) == arr.shape[0]
    with np.errstate(over="ignore"):
        finite = np.isfinite(arr.astype(np.float32)).all(axis=1)
    assert (r.is_ood[~finite]).all()
    assert np.isfinite(r.p_value).all() and ((r.p_value >= 0) & (r.p_value <= 1)).all()


# No numpy warning may escape into the host's process (an error under -W error): rows whose
# features are +inf and -inf at once once raised "invalid value encountered in reduce".
@pytest.mark.filterwarnings("error::RuntimeWarning")
@settings(max_examples=100, **SETTINGS)
@given(
    arr=hnp.arrays(
        np.float32, st.tuples(st.integers(1, 6), st.just(16)),
        elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
    )
)
def test_any_float_values_are_scored(guard, arr) -> None:  # type: ignore[no-untyped-def]
    """Huge, tiny, NaN and infinite values never crash the guard; non-finite rows are OOD."""
    r = guard.check(arr)
    bad = ~np.isfinite(arr).all(axis=1)
    assert r.is_ood[bad].all() and np.isinf(r.score[bad]).all()
    assert not np.isnan(r.score).any()


@pytest.mark.parametrize("obj", [object(), "text", {"a": 1}, [[1.0] * 16, [2.0] * 15]])
def test_non_arrays(guard, obj) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError):
        guard.check(obj)


def test_byte_order_and_layout_do_not_change_the_scores(guard, data) -> None:  # type: ignore[no-untyped-def]
    """Big-endian and non-contiguous float32 go through the cast path; scores are the same."""
    x = np.ascontiguousarray(data["test"][:20], dtype=np.float32)
    want = guard.check(x).score
    np.testing.assert_array_equal(guard.check(x.astype(">f4")).score, want)
    np.testing.assert_array_equal(guard.check(np.asfortranarray(x)).score, want)
    np.testing.assert_array_equal(guard.check(np.repeat(x, 2, axis=0)[::2]).score, want)


@settings(max_examples=200, deadline=None)
@given(
    arr=hnp.arrays(
        np.float32, st.tuples(st.integers(1, 12), st.sampled_from([1, 7, 16, 64])),
        elements=st.one_of(st.floats(width=32, allow_nan=True, allow_infinity=True),
                           st.sampled_from([3.4028235e38, -3.4028235e38, np.inf, -np.inf])),
    )
)
def test_small_batches_finiteness_by_sum_equals_isfinite(arr) -> None:  # type: ignore[no-untyped-def]
    """Batches of up to _SUM_CHECK_VALUES values are checked with a Python sum (extremes of
    float32, inf and -inf together, NaN); larger ones with numpy: the same answer."""
    from oodguard.validation import _SUM_CHECK_VALUES, _all_finite

    assert _all_finite(arr) == bool(np.isfinite(arr).all())
    if arr.size <= _SUM_CHECK_VALUES:  # the same values in a larger batch take numpy's check
        big = np.concatenate([arr, np.zeros((_SUM_CHECK_VALUES, arr.shape[1]), np.float32)])
        assert _all_finite(big) == _all_finite(arr)
