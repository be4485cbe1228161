"""Watching an SSL run without labels: RankMe of the teacher and a collapse guard."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from nnunet_ssl.desd.rankme import gather_rows, rankme

# thresholds of the collapse guard (fractions of log K for the teacher's entropy)
LOW_ENTROPY_FRACTION = 0.05
HIGH_ENTROPY_FRACTION = 0.95
MIN_RANKME = 1.5


class CollapseError(RuntimeError):
    """Raised to stop a run whose representation collapsed (``stop_on_collapse``)."""


@torch.no_grad()
def teacher_rankme(teacher: torch.nn.Module, batches: Sequence[torch.Tensor], device: torch.device) -> dict:
    """RankMe of the teacher's bottleneck embeddings and of its pooled encoder features.

    Rows from every process are gathered first, so under DDP the rank is that of the
    whole set of views.
    """
    was_training = teacher.training
    teacher.eval()
    pooled, embedded = [], []
    for x in batches:
        p = teacher.pooled(x.to(device, non_blocking=True)).float()
        pooled.append(p)
        embedded.append(teacher.head.embed(p).float())
    teacher.train(was_training)
    return {"rankme_embedding": rankme(gather_rows(torch.cat(embedded))),
            "rankme_features": rankme(gather_rows(torch.cat(pooled)))}


def collapse_reason(entropy: float, out_dim: int, rankme_embedding: Optional[float]) -> Optional[str]:
    """Why an epoch looks collapsed, or None.

    Example:
        >>> collapse_reason(0.01, 65536, 100.0)
        'teacher outputs are one-hot (entropy 0.010 nats)'
        >>> collapse_reason(5.0, 65536, 100.0) is None
        True
    """
    log_k = math.log(out_dim)
    if entropy < LOW_ENTROPY_FRACTION * log_k:
        return f"teacher outputs are one-hot (entropy {entropy:.3f} nats)"
    if entropy > HIGH_ENTROPY_FRACTION * log_k:
        return f"teacher outputs are uniform (entropy {entropy:.3f} of log K = {log_k:.3f} nats)"
    if rankme_embedding is not None and rankme_embedding < MIN_RANKME:
        return f"RankMe of the teacher's embeddings is {rankme_embedding:.2f}, near 1"
    return None


def collapse_advice(settings, reason: str) -> str:
    """What to change, from the run's own figures, for a run whose guard found ``reason``.

    Compares the run's settings with what the adaptive recipe (:mod:`nnunet_ssl.desd.recipe`)
    would choose for its batch and length, and names every setting that is off in the direction
    that leads to ``reason`` (uniform or one-hot outputs, or low RankMe).

    Example:
        >>> from nnunet_ssl.desd.settings import DeSDSettings
        >>> s = DeSDSettings.from_dict({"recipe": "paper", "batch_size": 4, "num_epochs": 30,
        ...                             "num_iterations_per_epoch": 50})
        >>> print(collapse_advice(s, "teacher outputs are uniform"))  # doctest: +NORMALIZE_WHITESPACE
        8 views per step against K = 65536 prototypes: lower out_dim to 4096 (512 per view) or raise the batch;
        teacher momentum 0.9996 averages over 2500 iterations, 167% of this 1500-iteration run: lower
        momentum_teacher to 0.99; teacher temperature 0.07 is soft for 8 views per step: lower teacher_temp to
        0.0419 (recipe "adaptive" chooses all of these)
    """
    from nnunet_ssl.desd.recipe import adaptive_values

    b, total = settings.batch_size, settings.num_epochs * settings.num_iterations_per_epoch
    views = 2 * b
    want = adaptive_values(b, settings.num_epochs, settings.num_iterations_per_epoch)
    tips = []
    one_hot = "one-hot" in reason
    if not one_hot and settings.out_dim > 2 * want["out_dim"]:
        tips.append(f"{views} views per step against K = {settings.out_dim} prototypes: lower out_dim to "
                    f"{want['out_dim']} ({want['out_dim'] // views} per view) or raise the batch")
    horizon = 1.0 / max(1.0 - settings.momentum_teacher, 1e-12)
    if horizon > 2.0 / max(1.0 - want["momentum_teacher"], 1e-12):
        tips.append(f"teacher momentum {settings.momentum_teacher} averages over {horizon:.0f} iterations, "
                    f"{100 * horizon / total:.0f}% of this {total}-iteration run: lower momentum_teacher to "
                    f"{want['momentum_teacher']}")
    if not one_hot and settings.teacher_temp > want["teacher_temp"] + 0.005:
        tips.append(f"teacher temperature {settings.teacher_temp} is soft for {views} views per step: lower "
                    f"teacher_temp to {want['teacher_temp']}")
    if one_hot and settings.teacher_temp < want["teacher_temp"] - 0.005:
        tips.append(f"teacher temperature {settings.teacher_temp} is sharp: raise teacher_temp to "
                    f"{want['teacher_temp']}")
    lr_ratio = settings.lr / want["lr"]
    if lr_ratio > 4 or lr_ratio < 0.25:
        tips.append(f"lr {settings.lr} (per 256) is {lr_ratio:.2g} times the recipe's {want['lr']:.3g} for a "
                    f"batch of {b}")
    if tips:
        return "; ".join(tips) + ' (recipe "adaptive" chooses all of these)'
    return (f"the settings follow the adaptive recipe for {views} views per step; raise the batch "
            "(more views per step), or add koleo_weight (e.g. 0.1) to spread the features")
