"""Learning-rate formulas for fine-tuning and the per-epoch scheduler that applies them.

nnU-Net sets the learning rate once per epoch (``lr_scheduler.step(epoch)`` at
the start of each epoch) with the "poly" rule ``lr0 * (1 - e / E) ** 0.9``.
The warm-up rule ramps the learning rate linearly over the first ``W`` epochs
and then follows the poly rule over the remaining ``E - W`` epochs, the same
shape as nnU-Net's own ``nnUNetTrainer_warmup``:

    lr(e) = lr0 * (e + 1) / W                         for e < W
    lr(e) = lr0 * (1 - (e - W) / (E - W)) ** 0.9      for e >= W

so the last warm-up epoch and the first epoch after it both use ``lr0``.
"""
from __future__ import annotations

from typing import Callable, List

import torch


def poly_lr(epoch: int, initial_lr: float, num_epochs: int, exponent: float = 0.9) -> float:
    """nnU-Net's poly rule.

    Example:
        >>> poly_lr(0, 0.01, 100)
        0.01
    """
    return initial_lr * (1 - epoch / num_epochs) ** exponent


def warmup_poly_lr(epoch: int, initial_lr: float, num_epochs: int, warmup_epochs: int,
                   exponent: float = 0.9) -> float:
    """Linear warm-up over ``warmup_epochs`` epochs, then poly decay (see the module docstring).

    Example:
        >>> [round(warmup_poly_lr(e, 0.01, 100, 4), 6) for e in range(5)]
        [0.0025, 0.005, 0.0075, 0.01, 0.01]
    """
    if warmup_epochs < 0 or warmup_epochs >= num_epochs:
        raise ValueError(f"warmup_epochs must lie in [0, num_epochs), got {warmup_epochs} of {num_epochs}")
    if epoch < warmup_epochs:
        return initial_lr * (epoch + 1) / warmup_epochs
    return poly_lr(epoch - warmup_epochs, initial_lr, num_epochs - warmup_epochs, exponent)


def default_warmup_epochs(num_epochs: int) -> int:
    """A twentieth of the run, at least one epoch (nnU-Net's warm-up trainer: 50 of 1000).

    Example:
        >>> default_warmup_epochs(100), default_warmup_epochs(1000)
        (5, 50)
    """
    return max(1, num_epochs // 20)


class EpochLRScheduler:
    """Sets every parameter group's learning rate to ``lr_at(epoch) * group["lr_scale"]``.

    Drop-in for nnU-Net's ``PolyLRScheduler`` (nnU-Net only calls ``step(epoch)``);
    groups without ``lr_scale`` use 1.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float]):
        self.optimizer = optimizer
        self.lr_at = lr_at
        self.last_epoch = -1
        self._last_lr: List[float] = [g["lr"] for g in optimizer.param_groups]

    def step(self, epoch: int | None = None) -> None:
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        base = self.lr_at(self.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = base * group.get("lr_scale", 1.0)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self) -> List[float]:
        return self._last_lr
