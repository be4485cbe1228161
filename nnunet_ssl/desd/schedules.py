"""Per-iteration schedules, precomputed as arrays (as DINO does).

Each function returns one value per training iteration, so that the trainer only
indexes ``schedule[epoch * iterations_per_epoch + step]``; resuming at an epoch
resumes every schedule at the same place.
"""
from __future__ import annotations

import numpy as np


def cosine_schedule(base: float, final: float, epochs: int, iterations_per_epoch: int,
                    warmup_epochs: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``base``, then a cosine from ``base`` to ``final``.

    Example:
        >>> s = cosine_schedule(1.0, 0.0, epochs=2, iterations_per_epoch=2)
        >>> [round(float(v), 3) for v in s]
        [1.0, 0.75, 0.25, 0.0]
    """
    total = epochs * iterations_per_epoch
    n_warm = min(warmup_epochs * iterations_per_epoch, total)
    warm = np.linspace(warmup_start, base, n_warm) if n_warm > 0 else np.zeros(0)
    n_cos = total - n_warm
    if n_cos == 1:
        cos = np.array([base])
    else:
        t = np.arange(n_cos) / max(n_cos - 1, 1)
        cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t))
    return np.concatenate([warm, cos]).astype(np.float64)


def teacher_temperature_schedule(warmup_temp: float, temp: float, warmup_epochs: int,
                                 epochs: int) -> np.ndarray:
    """Teacher temperature per epoch: linear from ``warmup_temp`` to ``temp``, then constant.

    Example:
        >>> [round(float(v), 3) for v in teacher_temperature_schedule(0.04, 0.07, 3, 5)]
        [0.04, 0.055, 0.07, 0.07, 0.07]
    """
    n_warm = min(warmup_epochs, epochs)
    warm = np.linspace(warmup_temp, temp, n_warm) if n_warm > 0 else np.zeros(0)
    return np.concatenate([warm, np.full(epochs - n_warm, temp)])
