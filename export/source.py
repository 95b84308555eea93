"""The exported float32 graph measured against the model as the user gave it.

A float64, float16 or bfloat16 model is exported as a float32 copy (ONNX Runtime's CPU kernels
are float32). Rather than hide that, the exporter runs the model in its own dtype on the parity
inputs and records how far the graph's code and reconstruction lie from it
(``manifest.parity["source"]``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from oodguard.export.autoencoder import Autoencoder

__all__ = ["source_parity"]

log = logging.getLogger(__name__)

# Beyond this relative deviation of the reconstruction the float32 bundle is not the model the
# user holds in any useful sense; it is logged (a float16/bfloat16 model differs by ~1e-3..1e-2).
WARN_REL = 0.05


@torch.inference_mode()
def source_parity(ae: Autoencoder, x_model: np.ndarray, onnx_x_hat: np.ndarray) -> dict[str, Any]:
    """``{"dtype", "n", "z0_max_abs_diff", "x_hat_max_abs_diff", "x_hat_rel_diff"}``: the
    graph's ``x̂`` (``onnx_x_hat``) and the float32 code against the source-dtype model on
    ``x_model`` (model space). ``x_hat_rel_diff`` is the largest difference over the largest
    ``|x̂|``."""
    if ae.source is None:
        raise ValueError("the autoencoder has no source-dtype copy (it is float32)")
    enc_s, dec_s = ae.source
    x = torch.from_numpy(x_model)
    try:
        z_s = enc_s(x)
        x_hat_s = dec_s(z_s).double().numpy()
    except Exception as err:  # e.g. a float16 kernel missing on the CPU: recorded, not fatal
        log.warning("could not run the %s model on the CPU to measure the float32 bundle "
                    "against it (%s: %s)", ae.source_dtype, type(err).__name__, err)
        return {"dtype": str(ae.source_dtype).removeprefix("torch."),
                "error": f"{type(err).__name__}: {err}"[:300]}
    z32 = ae.encoder(x).double().numpy()
    dz = float(np.abs(z32 - z_s.double().numpy()).max())
    dx = float(np.abs(np.asarray(onnx_x_hat, dtype=np.float64) - x_hat_s).max())
    rel = dx / (float(np.abs(x_hat_s).max()) + 1e-30)
    if rel > WARN_REL:
        log.warning("the float32 bundle's reconstruction differs from the %s model's by up to "
                    "%.3g (%.1f%% of its largest value)", ae.source_dtype, dx, 100 * rel)
    return {"dtype": str(ae.source_dtype).removeprefix("torch."), "n": len(x_model),
            "z0_max_abs_diff": dz, "x_hat_max_abs_diff": dx, "x_hat_rel_diff": rel}
