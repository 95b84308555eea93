"""Issue 11's table, image and tabular rows: each model exports, calibrates and scores (batch 1
and 256), or fails with a named ExportError before anything is traced."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from _export_models import (
    VAE,
    DropoutEncoder,
    conv_ae,
    images,
    mlp_ae,
    roundtrip,
    spatial_ae,
    tabular,
)
from torch import nn

from oodguard.bundle import MODEL_FILE, read_bundle
from oodguard.errors import ExportError
from oodguard.export import (
    LatentOutputError,
    ModelSplitError,
    NotComposableError,
    NotDeterministicError,
    ReconstructionShapeError,
    UnsupportedDtypeError,
    export_bundle,
    prepare_autoencoder,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_conv_ae_left_in_training_mode_exports_with_a_warning(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """Conv AE 1×28×28 with BatchNorm, LeakyReLU/GELU; the modules are in train() mode: the
    bundle comes from an eval copy, the warning names the BatchNorm, the manifest records it,
    and the caller's modules stay in training mode. No stack traces in the graph."""
    enc, dec = conv_ae(latent=8, width=4)
    x = images(160)
    with caplog.at_level(logging.WARNING, logger="oodguard.export"):
        report, _ = roundtrip(tmp_path, x[:96], x[96:], images(64, seed=1), encoder=enc,
                              decoder=dec)
    assert "encoder.1 (BatchNorm2d)" in caplog.text and "model.eval()" in caplog.text
    assert report.dynamics["model"]["exported_from_training_mode"] == ["encoder.1 (BatchNorm2d)"]
    assert enc.training and dec.training
    import onnx

    graph = onnx.load_from_string(read_bundle(report.path).files[MODEL_FILE]).graph
    assert not any(n.metadata_props or n.doc_string for n in graph.node)


def test_spatial_latent_is_flattened_and_recorded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    enc, dec = spatial_ae(channels=3, side=16)
    x = images(160, channels=3, side=16)
    report, _ = roundtrip(tmp_path, x[:96], x[96:], images(32, 3, 16, seed=1),
                          encoder=enc.eval(), decoder=dec.eval())
    assert report.dynamics["model"]["latent_shape"] == [8, 4, 4]
    assert read_bundle(report.path).manifest.latent_dim == 128


def test_vae_tuple_needs_latent_and_then_exports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = tabular(160)
    vae = VAE().eval()
    with pytest.raises(LatentOutputError, match=r"tuple\(Tensor\[4, 3\].*latent=0"):
        export_bundle(tmp_path / "no", model=vae, x_train=x)
    report, _ = roundtrip(tmp_path, x[:96], x[96:], tabular(32, seed=1), model=vae,
                          latent="mean")
    assert report.dynamics["model"]["latent"] == "'mean'"


def test_vae_returning_a_distribution_uses_its_mean(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = tabular(160)
    report, _ = roundtrip(tmp_path, x[:96], x[96:], tabular(32, seed=1),
                          model=VAE(distribution=True).eval())
    assert report.dynamics["model"]["latent"] == "distribution mean"


def test_latent_selectors_name_what_to_pass() -> None:
    x = tabular(8)

    class DictEncoder(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"z_mean": x[:, :3], "z_logvar": x[:, 3:6]}

    _, dec = mlp_ae()
    ae, _ = prepare_autoencoder(x_train=x, encoder=DictEncoder(), decoder=dec, latent="mean")
    assert ae.latent_shape == (3,)
    ae, _ = prepare_autoencoder(x_train=x, encoder=DictEncoder(), decoder=dec,
                                latent=lambda out: out["z_mean"])
    assert ae.latent == "callable"
    with pytest.raises(LatentOutputError, match="pass latent='<key>'.*'z_mean'"):
        prepare_autoencoder(x_train=x, encoder=DictEncoder(), decoder=dec)
    with pytest.raises(LatentOutputError, match="leave latent=None"):
        prepare_autoencoder(x_train=x, encoder=mlp_ae()[0], decoder=dec, latent=1)


@pytest.mark.parametrize("encoder", [VAE(sample=True), DropoutEncoder()], ids=["sampling",
                                                                                "dropout"])
def test_non_deterministic_encoders_are_named(encoder: nn.Module) -> None:
    kw = {"model": encoder} if isinstance(encoder, VAE) else {"encoder": encoder,
                                                                 "decoder": mlp_ae()[1]}
    with pytest.raises(NotDeterministicError, match="encoder is not deterministic.*sampling"):
        export_bundle("/nonexistent/never-written", x_train=tabular(16), **kw)


def test_swapped_and_mismatched_modules_are_named() -> None:
    enc, dec = mlp_ae()
    x = tabular(16)
    with pytest.raises(NotComposableError, match="look swapped"):
        export_bundle("/nonexistent/a", encoder=dec, decoder=enc, x_train=x)
    with pytest.raises(NotComposableError, match="does not accept its code"):
        export_bundle("/nonexistent/b", encoder=enc, decoder=mlp_ae(latent=5)[1], x_train=x)
    with pytest.raises(ReconstructionShapeError, match=r"shape \(4, 10\) but x has \(4, 12\)"):
        export_bundle("/nonexistent/c", encoder=enc, decoder=mlp_ae(dim=10)[1], x_train=x)
    with pytest.raises(ModelSplitError, match="no encode/decode methods and no encoder/decoder"):
        export_bundle("/nonexistent/d", model=nn.Linear(12, 12), x_train=x)
    with pytest.raises(ModelSplitError, match=r"layers are \['0', '1', '2'\]"):
        export_bundle("/nonexistent/e", model=nn.Sequential(*mlp_ae()[0]), split="7",
                      x_train=x)


def test_unsupported_dtypes_are_named() -> None:
    enc, dec = mlp_ae()
    with pytest.raises(UnsupportedDtypeError, match="complex"):
        export_bundle("/nonexistent/a", encoder=enc, decoder=dec,
                      x_train=tabular(8).astype(np.complex64))
    with pytest.raises(UnsupportedDtypeError, match="several dtypes"):
        export_bundle("/nonexistent/b", encoder=enc.double(), decoder=dec, x_train=tabular(8))
    q = nn.Linear(12, 3)
    q.weight = nn.Parameter(torch.ones(3, 12, dtype=torch.int32), requires_grad=False)
    with pytest.raises(UnsupportedDtypeError, match="Dequantize"):
        export_bundle("/nonexistent/c", encoder=q, decoder=dec, x_train=tabular(8))
    # every named mistake is an ExportError, as callers catch it
    assert issubclass(UnsupportedDtypeError, ExportError)


def test_float64_model_split_at_a_layer_is_measured_as_given(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A .double() nn.Sequential split after a named layer: exported as float32, and the
    graph's reconstruction is measured against the float64 model (manifest.parity.source)."""
    enc, dec = mlp_ae()
    model = nn.Sequential(*enc, *dec).double().eval()
    x = tabular(160).astype(np.float64)
    report, _ = roundtrip(tmp_path, x[:96], x[96:].astype(np.float32),
                          tabular(32, seed=1), model=model, split="2")
    source = read_bundle(report.path).manifest.parity["source"]
    assert source["dtype"] == "float64" and source["n"] > 0
    assert 0 < source["x_hat_rel_diff"] < 1e-4  # float32 round-off of the float64 model
    assert report.dynamics["model"]["source_dtype"] == "float64"
    assert next(model.parameters()).dtype == torch.float64  # the caller's model untouched


def test_bfloat16_model_is_measured_against_itself() -> None:
    """bfloat16 weights: a float32 copy is what the graph runs; the source copy stays bfloat16
    and the recorded deviation is bfloat16's round-off, not zero and not a silent cast."""
    from oodguard.export.source import source_parity

    enc, dec = mlp_ae()
    x = tabular(32)
    ae, xm = prepare_autoencoder(x_train=x, encoder=enc.bfloat16().eval(),
                                 decoder=dec.bfloat16().eval())
    assert ae.source_dtype == torch.bfloat16 and ae.source is not None
    with torch.inference_mode():
        x_hat32 = ae.decoder(ae.encoder(torch.from_numpy(xm))).numpy()
    doc = source_parity(ae, xm, x_hat32)
    assert doc["dtype"] == "bfloat16"
    assert 1e-4 < doc["x_hat_rel_diff"] < 0.1
