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
