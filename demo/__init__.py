"""The digits demo: train a small autoencoder, export, calibrate and evaluate (``oodguard demo``).

Needs the ``demo`` extra (torch, onnx, scikit-learn, matplotlib).
"""

from oodguard.demo.run import run_demo
from oodguard.demo.train import MLPAutoencoder, train_autoencoder

__all__ = ["MLPAutoencoder", "run_demo", "train_autoencoder"]
