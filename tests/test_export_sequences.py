"""Issue 11's table, sequence rows: GRU and Conv1d autoencoders on ``[N, 1, L]`` export,
calibrate and score; a map that does not contract is reported (bounded, warned, recorded)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import torch
from _export_models import GRUDecoder, GRUEncoder, Rotation, conv1d_ae, roundtrip, sines
from torch import nn

from oodguard.bundle import MODEL_FILE, read_bundle
from oodguard.export import discover_attractors, export_bundle


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_autoencoder(tmp_path, cell: str) -> None:  # type: ignore[no-untyped-def]
    """GRU/LSTM AEs on [N, 1, 64]: the recurrence is ONNX's own GRU/LSTM node (the
    TorchScript exporter), not one decomposed cell per time step."""
    x = sines(160, length=64)
    report, _ = roundtrip(tmp_path, x[:96], x[96:], sines(32, 64, seed=1),
                          encoder=GRUEncoder(hidden=8, latent=4, cell=cell).eval(),
                          decoder=GRUDecoder(length=64, hidden=8, latent=4, cell=cell).eval())
    assert report.dynamics["model"]["latent_shape"] == [4]
    graph = onnx.load_from_string(read_bundle(report.path).files[MODEL_FILE]).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count(cell.upper()) == 2 * 4 + 1  # one per call: E T + 1 times, D T times


def test_conv1d_autoencoder_with_a_sequence_latent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    enc, dec = conv1d_ae(length=64)
    x = sines(160, length=64)
    report, _ = roundtrip(tmp_path, x[:96], x[96:], sines(32, 64, seed=1), encoder=enc.eval(),
                          decoder=dec.eval())
    assert report.dynamics["model"]["latent_shape"] == [4, 16]


def test_a_map_that_does_not_contract_is_bounded_warned_and_recorded(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A rotation never converges: discovery stops at max_steps, the warning says what the
    attractor features then mean, and the manifest records 0 converged codes."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2)).astype(np.float32) + 3.0
    with caplog.at_level(logging.WARNING, logger="oodguard.export"):
        report, scores = roundtrip(tmp_path, x[:120], x[120:], x[:32], encoder=nn.Identity(),
                                   decoder=Rotation(), max_steps=20, max_codes=50)
    assert "does not contract" in caplog.text and "steps_to_converge will read T" in caplog.text
    rec = report.dynamics["discovery"]
    assert rec["n_train"] == 120 and rec["n_data"] == 50 and rec["max_steps"] == 20
    assert rec["n_data_converged"] == 0 and rec["n_noise_converged"] == 0


def test_max_codes_subsamples_training_codes_with_the_seed() -> None:
    x = np.random.default_rng(1).standard_normal((300, 3)).astype(np.float32)
    half = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        half.weight.copy_(0.5 * torch.eye(3))
    a = discover_attractors(nn.Identity(), half, x, n_noise=0, max_codes=40, seed=3)
    b = discover_attractors(nn.Identity(), half, x, n_noise=0, max_codes=40, seed=3)
    assert a.n_data == 40 and a.n_train == 300 and a.n_data_converged == 40
    np.testing.assert_array_equal(a.attractors, b.attractors)
    with pytest.raises(ValueError,
                       match="The 'max_steps, max_codes' parameter of "
                             "discover_attractors must be ints >= 1"):
        discover_attractors(nn.Identity(), half, x, max_codes=0)
    with pytest.raises(ValueError, match="max_steps, max_codes"):
        export_bundle("/nonexistent/x", encoder=nn.Identity(), decoder=half, x_train=x,
                      max_steps=0)
