"""Wrapped models with tensors and other array-likes: bad input is never a guard failure,
and fallback rows keep the caller's type."""

from __future__ import annotations

import numpy as np
import pytest

from oodguard import Guard, InvalidInputError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def guard(bundle):  # type: ignore[no-untyped-def]
    return Guard.load(bundle, registry=None)


@pytest.fixture(scope="module")
def mixed(data) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.ascontiguousarray(np.concatenate([data["test"][:4], data["noise"][:2]]))


def test_a_tensor_that_requires_grad_is_scored_like_its_array(guard, mixed) -> None:  # type: ignore[no-untyped-def]
    t = torch.from_numpy(mixed.copy()).requires_grad_(True)
    r = guard.check(t)
    np.testing.assert_array_equal(r.score, guard.check(mixed).score)
    assert t.requires_grad and t.grad is None  # the caller's tensor is untouched


def test_float64_and_half_tensors_are_cast(guard, mixed) -> None:  # type: ignore[no-untyped-def]
    want = guard.check(mixed).score
    np.testing.assert_array_equal(guard.check(torch.from_numpy(mixed).double()).score, want)
    half = guard.check(torch.from_numpy(mixed).half()).score
    assert half.shape == want.shape


def test_a_tensor_numpy_cannot_hold_is_invalid_input(guard, mixed) -> None:  # type: ignore[no-untyped-def]
    t = torch.from_numpy(mixed).to(torch.bfloat16)
    with pytest.raises(InvalidInputError, match=r"got Tensor that cannot be converted to a numpy "
                                                r"array .*pass x.float\(\)") as info:
        guard.check(t)
    assert info.value.reason == "type"
    with pytest.raises(InvalidInputError, match="cannot be converted"):
        guard.wrap(lambda x: x, on_error="open")(t)  # never a guard failure, never unguarded


def test_int_tensors_are_refused_as_dtype(guard, mixed) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match="got dtype int64") as info:
        guard.check(torch.from_numpy((mixed * 10).astype(np.int64)))
    assert info.value.reason == "dtype"


class _DuckTensor:
    """A tensor-like from another library (device memory behind detach/cpu/numpy)."""

    def __init__(self, a: np.ndarray, fail: bool = False) -> None:
        self.a, self.fail, self.calls = a, fail, []

    def detach(self) -> _DuckTensor:
        self.calls.append("detach")
        return self

    def cpu(self) -> _DuckTensor:
        self.calls.append("cpu")
        return self

    def numpy(self) -> np.ndarray:
        if self.fail:
            raise RuntimeError("device memory is not mapped")
        return self.a


def test_duck_typed_tensors_are_detached_and_copied(guard, mixed) -> None:  # type: ignore[no-untyped-def]
    duck = _DuckTensor(mixed)
    np.testing.assert_array_equal(guard.check(duck).score, guard.check(mixed).score)
    assert duck.calls == ["detach", "cpu"]


def test_any_conversion_failure_is_the_callers_error_under_both_policies(guard, mixed) -> None:  # type: ignore[no-untyped-def]
    class Hostile:
        def __array__(self, *a: object, **k: object) -> np.ndarray:
            raise KeyError("no")

    calls: list[object] = []
    for bad, msg in ((_DuckTensor(mixed, fail=True), r"RuntimeError: device memory is not "
                                                     r"mapped"),
                     (Hostile(), r"got Hostile that cannot be converted .*KeyError")):
        for on_error in ("open", "closed"):
            model = guard.wrap(calls.append, on_error=on_error)
            with pytest.raises(InvalidInputError, match=msg):
                model(bad)
    assert calls == []  # the model never ran on input the guard could not read


def test_flag_hands_the_model_the_callers_tensor(guard, mixed) -> None:  # type: ignore[no-untyped-def]
    t = torch.from_numpy(mixed).requires_grad_(True)
    seen: list[object] = []
    out = guard.wrap(lambda x: seen.append(x) or x.sum(dim=1))(t)
    assert seen[0] is t and isinstance(out.prediction, torch.Tensor)


def test_fallback_with_tensors_indexes_the_callers_tensor(guard, mixed) -> None:  # type: ignore[no-untyped-def]
    t = torch.from_numpy(mixed)
    got: dict[str, object] = {}

    def predict(x):  # type: ignore[no-untyped-def]
        got["predict"] = x
        return x.sum(dim=1, keepdim=True)

    def fallback(x):  # type: ignore[no-untyped-def]
        got["fallback"] = x
        return torch.full((len(x), 1), -1.0, dtype=torch.float64)

    out = guard.wrap(predict, on_ood="fallback", fallback=fallback)(t)
    ood = torch.as_tensor(out.result.is_ood)
    assert ood[4:].all() and not ood.all()  # the noise rows are OOD, some test rows are not
    assert isinstance(got["predict"], torch.Tensor) and isinstance(got["fallback"], torch.Tensor)
    torch.testing.assert_close(got["predict"], t[~ood])
    torch.testing.assert_close(got["fallback"], t[ood])
    pred = out.prediction
    assert isinstance(pred, torch.Tensor) and pred.dtype == torch.float64
    assert pred.shape == (6, 1)
    torch.testing.assert_close(pred[ood], torch.full((int(ood.sum()), 1), -1.0,
                                                     dtype=torch.float64))
    torch.testing.assert_close(pred[~ood], t[~ood].sum(dim=1, keepdim=True).double())


def test_fallback_with_a_numpy_predictor_and_a_torch_fallback(guard, mixed) -> None:  # type: ignore[no-untyped-def]
    out = guard.wrap(lambda x: np.asarray(x).sum(axis=1, keepdims=True), on_ood="fallback",
                     fallback=lambda x: torch.zeros((len(x), 1)))(mixed)
    assert isinstance(out.prediction, torch.Tensor) and out.prediction.shape == (6, 1)


def test_fallback_with_lists_hands_lists(guard, mixed) -> None:  # type: ignore[no-untyped-def]
    rows = mixed.tolist()
    seen: list[object] = []

    def predict(x):  # type: ignore[no-untyped-def]
        seen.append(x)
        return np.ones((len(x), 2))

    out = guard.wrap(predict, on_ood="fallback", fallback=lambda x: np.zeros((len(x), 2)))(rows)
    ood = out.result.is_ood
    assert type(seen[0]) is list and len(seen[0]) == int((~ood).sum())
    np.testing.assert_array_equal(out.prediction[:, 0], np.where(ood, 0, 1))
