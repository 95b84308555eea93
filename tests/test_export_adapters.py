"""The adapters: transformers' ViT-MAE (tiny random config, no weights fetched) and PyOD's
AutoEncoder with its standardisation inside the graph; and preprocessing in general."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from _export_models import images, mlp_ae, roundtrip, tabular
from torch import nn

from oodguard.bundle import MODEL_FILE, read_bundle
from oodguard.export import ModelSplitError, export_bundle, pyod_autoencoder, vit_mae
from oodguard.features import FEATURE_NAMES

RECON = FEATURE_NAMES.index("recon_error")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _recon(path: object, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(read_bundle(path).files[MODEL_FILE],  # type: ignore[arg-type]
                                providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0][:, RECON])


def test_vit_mae_tiny_random_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16,
                       num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       decoder_hidden_size=16, decoder_num_hidden_layers=1,
                       decoder_num_attention_heads=2, decoder_intermediate_size=32)
    model = ViTMAEForPreTraining(cfg).eval()
    x = images(160, channels=3, side=16)
    report, _ = roundtrip(tmp_path, x[:96], x[96:], images(32, 3, 16, seed=1),
                          model=vit_mae(model), max_steps=50)
    assert report.dynamics["model"]["latent_shape"] == [17, 16]  # CLS + 16 patches, hidden 16
    assert model.config.mask_ratio == 0.75  # the caller's model is not modified
    # The bundle's reconstruction is MAE's own, unmasked: decoder(encoder(x)) through torch.
    xt = torch.from_numpy(x[:8])
    with torch.inference_mode():
        L = (16 // 4) ** 2
        out = model(pixel_values=xt, noise=torch.arange(L, dtype=torch.float32).expand(8, L))
    assert out.mask.sum() > 0  # with the default ratio, MAE masks; the adapter does not


def test_pyod_autoencoder_scores_raw_inputs_as_pyod_does(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pyod.models.auto_encoder import AutoEncoder

    x = tabular(256)
    det = AutoEncoder(epoch_num=2, hidden_neuron_list=[8, 4], batch_size=64, verbose=0,
                      random_state=0)
    det.fit(x)
    report, _ = roundtrip(tmp_path, x[:160], x[160:], tabular(32, seed=1),
                          model=pyod_autoencoder(det))
    assert report.dynamics["model"]["preprocess"] == {"kind": "standardize", "shape": [12]}
    # PyOD's score is ‖x̂ − x‖ in its standardised space; recon_error is its mean square.
    want = det.decision_function(x[:20]) ** 2 / x.shape[1]
    np.testing.assert_allclose(_recon(report.path, x[:20]), want, rtol=1e-4)
    with pytest.raises(ModelSplitError, match=r"call detector.fit\(X\) first"):
        pyod_autoencoder(AutoEncoder())


def test_preprocess_runs_inside_the_graph(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A (mean, std) pair: the bundle takes raw inputs and reconstructs in model space, as the
    model does on standardised inputs."""
    enc, dec = mlp_ae()
    x = tabular(64)
    mean, std = x.mean(0), x.std(0)
    raw = export_bundle(tmp_path / "raw", x_train=x, preprocess=(mean, std), encoder=enc.eval(),
                        decoder=dec.eval(), steps=2, n_noise=8)
    xs = torch.from_numpy((x - mean) / std)
    with torch.inference_mode():
        want = (dec(enc(xs)) - xs).pow(2).mean(dim=1).numpy()
    np.testing.assert_allclose(_recon(raw.path, x), want, rtol=1e-4)
    with pytest.raises(ValueError, match="carries its own preprocess"):
        from oodguard.export import EncoderDecoder, Standardize

        export_bundle(tmp_path / "x", model=EncoderDecoder(enc, dec, Standardize(mean, std)),
                      x_train=x, preprocess=(mean, std))
    with pytest.raises(Exception, match="std > 0"):
        export_bundle(tmp_path / "y", model=nn.Sequential(enc, dec), split="0", x_train=x,
                      preprocess=(mean, 0 * std))
