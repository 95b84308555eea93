"""oodguard.serve.service: the transport-neutral call both the HTTP app and Ray Serve make,
used here with no HTTP at all."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from _serving import metric_value

from oodguard import Guard, GuardFailure, InvalidInputError
from oodguard.metrics import render_latest
from oodguard.serve import Batcher, InferenceService


@pytest.fixture
def guard(bundle, registry):  # type: ignore[no-untyped-def]
    return Guard.load(bundle, registry=registry, name="s")


def run(service: InferenceService, *calls) -> list:  # type: ignore[no-untyped-def,type-arg]
    async def go() -> list:  # type: ignore[type-arg]
        await service.start()
        try:
            return await asyncio.gather(*(service.infer(x, **kw) for x, kw in calls),
                                        return_exceptions=True)
        finally:
            await service.stop()

    return asyncio.run(go())


def exposition(registry) -> str:  # type: ignore[no-untyped-def]
    return render_latest(registry)[0].decode()


def test_infer_returns_the_guards_result_alpha_or_fdr(guard, registry, data) -> None:
    service = InferenceService(guard, Batcher(guard.check, max_batch=64, max_wait_s=0.05),
                               max_request_rows=100)
    x = np.concatenate([data["test"][:30], data["noise"][:3]])
    plain, bh = run(service, (x, {}), (x, {"fdr": 0.1}))
    reference = Guard.load(guard.bundle.path, registry=None)
    np.testing.assert_array_equal(plain.score, reference.check(x).score)
    np.testing.assert_array_equal(bh.is_ood, reference.check(x, fdr=0.1).is_ood)
    assert bh.rule == "bh" and bh.fdr == 0.1
    text = exposition(registry)
    assert metric_value(text, "oodguard_inputs_total", guard="s", verdict="ood") == (
        plain.is_ood.sum() + bh.is_ood.sum())


def test_a_bad_batch_is_refused_and_counted_by_its_rows(guard, registry) -> None:
    service = InferenceService(guard, Batcher(guard.check, max_batch=64, max_wait_s=0),
                               max_request_rows=100)
    (err,) = run(service, (np.zeros((7, 3), np.float32), {}))
    assert isinstance(err, InvalidInputError) and "shape" in str(err)
    assert metric_value(exposition(registry), "oodguard_inputs_refused_total", guard="s",
                        reason=err.reason) == 7


def test_an_unexpected_error_becomes_a_counted_internal_guard_failure(guard, registry,
                                                                      data) -> None:
    def broken(x: np.ndarray) -> None:
        raise KeyError("bug")

    service = InferenceService(guard, Batcher(broken, max_batch=64, max_wait_s=0),
                               max_request_rows=100)
    (err,) = run(service, (data["test"][:2], {}))
    assert isinstance(err, GuardFailure) and err.reason == "internal"
    assert str(err) == "guard 's': internal error (KeyError)"
    assert metric_value(exposition(registry), "oodguard_guard_failures_total", guard="s",
                        kind="internal") == 1


def test_max_request_rows_is_validated(guard) -> None:
    with pytest.raises(ValueError, match="max_request_rows must be a positive int. Got 0"):
        InferenceService(guard, Batcher(guard.check, max_batch=1, max_wait_s=0),
                         max_request_rows=0)
