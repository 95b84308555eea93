"""The classifier benchmark's models (torch only), importable both from the project's
environment and from the peers' (benchmarks/classifier_ood_peers.py): ``build(spec)`` makes the
same architecture on either side, and the peers load the state dict trained here."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["CNN", "MLP", "build"]


class MLP(nn.Module):
    """``body``: flatten ▶ 64 ▶ 32 (ReLU); ``head``: linear to the classes."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(dim, 64), nn.ReLU(),
                                  nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, classes)

    def forward(self, x: Any) -> Any:
        return self.head(self.body(x))


class CNN(nn.Module):
    """``body``: two conv + max-pool blocks (16, 32 channels) ▶ 64 (ReLU); ``head``: linear."""

    def __init__(self, size: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, 64), nn.ReLU())
        self.head = nn.Linear(64, classes)

    def forward(self, x: Any) -> Any:
        return self.head(self.body(x))


def build(spec: dict[str, Any]) -> nn.Module:
    """``{"kind": "mlp", "dim": 64, "classes": 5}`` or ``{"kind": "cnn", "size": 8, ...}``."""
    if spec["kind"] == "mlp":
        return MLP(int(spec["dim"]), int(spec["classes"]))
    return CNN(int(spec["size"]), int(spec["classes"]))
