"""The training recipe :func:`oodguard.fit` uses, with early stopping.

What the paper names as making the latent map ``E∘D`` contract, and what the detection suite's
``wd_denoise`` recipe does: AdamW with weight decay 1e-4, Gaussian input noise (s.d. 0.1 of the
data's scale, so denoising), and a small bottleneck (:func:`oodguard.training.models.latent_size`).
The epoch count is chosen by early stopping on a holdout carved from the *training* rows: the
validation rows the user passes stay untouched for calibration, whose conformal guarantee needs
them exchangeable with future in-distribution inputs (a model chosen on them would break that).
The weights of the best holdout epoch are kept. Seeded: the same data, seed and thread count
give the same weights.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from oodguard.errors import check_parameter
from oodguard.progress import progress_bar, wants_progress

__all__ = ["Recipe", "TrainingRecord", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How :func:`train` trains (every field is recorded in the bundle's manifest).

    max_epochs : the most epochs; early stopping usually ends sooner.
    patience : epochs without a holdout improvement of ``min_delta`` (relative) before stopping.
    holdout : share of the training rows held out for early stopping (at most 5 000 rows).
    batch_size, lr, weight_decay : AdamW's; the learning rate follows a cosine over
        ``max_epochs``.
    noise : s.d. of the Gaussian input noise, as a share of the training data's s.d.
    """

    max_epochs: int = 200
    patience: int = 10
    min_delta: float = 1e-3
    holdout: float = 0.1
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    noise: float = 0.1

    def __post_init__(self) -> None:
        for name in ("max_epochs", "patience", "batch_size"):
            v = getattr(self, name)
            check_parameter(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name,
                            "an int >= 1", v, owner="Recipe")
        check_parameter(0 < self.holdout < 0.5, "holdout", "a float in (0, 0.5)", self.holdout,
                        owner="Recipe")
        for name in ("lr", "weight_decay", "noise", "min_delta"):
            v = getattr(self, name)
            check_parameter(isinstance(v, (int, float)) and v >= 0 and np.isfinite(v), name,
                            "a finite float >= 0", v, owner="Recipe")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainingRecord:
    """What :func:`train` did: epochs run, the best epoch and its holdout loss, the losses per
    epoch, rows used and seconds."""

    epochs: int
    best_epoch: int
    best_holdout_loss: float
    train_loss: tuple[float, ...]
    holdout_loss: tuple[float, ...]
    n_train: int
    n_holdout: int
    stopped_early: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train_loss"] = [round(v, 7) for v in self.train_loss]
        d["holdout_loss"] = [round(v, 7) for v in self.holdout_loss]
        return d


@torch.no_grad()
def _loss(model: nn.Module, data: torch.Tensor, batch: int = 1024) -> float:
    total = 0.0
    for i in range(0, len(data), batch):
        xb = data[i : i + batch]
        total += float(nn.functional.mse_loss(model(xb), xb, reduction="sum"))
    return total / data.numel()


def train(model: nn.Module, x: np.ndarray, recipe: Recipe, *, seed: int = 0,
          progress: bool | None = None) -> tuple[nn.Module, TrainingRecord]:
    """Train ``model`` on ``x [N, ...]`` (already in the model's input space) with
    ``recipe``; returns the model in eval mode with the best holdout epoch's weights, and the
    record. Seeded by ``seed`` (split, batches, noise)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    n_hold = min(5000, max(1, int(round(recipe.holdout * len(data)))))
    perm = torch.randperm(len(data), generator=gen)
    hold, fit = data[perm[:n_hold]], data[perm[n_hold:]]
    scale = float(fit.std()) or 1.0
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.max_epochs)
    drawn = wants_progress(log, progress)
    bar = progress_bar(recipe.max_epochs, "training", log, progress=drawn, unit="epoch")
    best, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
    train_losses: list[float] = []
    hold_losses: list[float] = []
    stopped = False
    for epoch in range(1, recipe.max_epochs + 1):
        model.train()
        order = torch.randperm(len(fit), generator=gen)
        total = 0.0
        for i in range(0, len(fit), recipe.batch_size):
            xb = fit[order[i : i + recipe.batch_size]]
            noisy = xb + recipe.noise * scale * torch.randn(xb.shape, generator=gen)
            loss = nn.functional.mse_loss(model(noisy), xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
        sched.step()
        model.eval()
        h = _loss(model, hold)
        train_losses.append(total / len(fit))
        hold_losses.append(h)
        bar.update()
        bar.set_postfix_str(f"holdout loss {h:.5f}")
        if not drawn and progress is not False and (epoch == 1 or epoch % 10 == 0):
            log.info("epoch %d  loss %.5f  holdout %.5f  (%.1fs)", epoch, train_losses[-1], h,
                     time.perf_counter() - t0)
        if h < best * (1 - recipe.min_delta):
            best, best_epoch = h, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= recipe.patience:
            stopped = True
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    record = TrainingRecord(len(train_losses), best_epoch, best, tuple(train_losses),
                            tuple(hold_losses), len(fit), n_hold, stopped,
                            time.perf_counter() - t0)
    log.info("trained %d epochs (best %d, holdout loss %.5g) in %.1fs", record.epochs,
             best_epoch, best, record.seconds)
    return model, record
