"""The DeSD objective and the centre update, as pure functions.

Unlike DINO's ``DINOLoss`` module, the loss never communicates: it is a function
of the logits. The centre update is a separate step that all-reduces only when a
process group exists, so everything here runs (and is tested) without one.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F


def teacher_probabilities(teacher_logits: torch.Tensor, center: torch.Tensor,
                          temperature: float) -> torch.Tensor:
    """Centred and sharpened teacher distribution: ``softmax((t - c) / T_t)``."""
    x = teacher_logits - center
    return F.softmax(x.to(_at_least_float32(x.dtype)) / temperature, dim=-1)


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    # half-precision logits (autocast) are upcast: softmax over K = 65536 needs the range
    return torch.promote_types(dtype, torch.float32)


def desd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
              student_temp: float, teacher_temp: float,
              head_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Deep self-distillation cross-entropy.

    For every student head ``h``, the cross-entropy ``H(P_t(x), P_s^h(x'))`` between the
    teacher's distribution on one view ``x`` and the head's distribution on every other
    view ``x'``, averaged over the batch and over the view pairs (as DINO), then averaged
    over the heads with ``head_weights`` (normalised to sum to 1; equal by default).

    Args:
        student_logits: ``(H, V, B, K)``: heads, views, batch, prototypes.
        teacher_logits: ``(V, B, K)``.
        center: ``(K,)`` or ``(1, K)``, subtracted from the teacher logits.
        student_temp: Student temperature ``T_s``.
        teacher_temp: Teacher temperature ``T_t``.
        head_weights: ``H`` non-negative weights, or None.

    Returns:
        A scalar tensor.

    Example:
        >>> s = torch.zeros(2, 2, 1, 4); t = torch.zeros(2, 1, 4)
        >>> round(float(desd_loss(s, t, torch.zeros(4), 0.1, 0.04)), 4)  # uniform: log 4
        1.3863
    """
    per_head = cross_entropy_per_head(student_logits, teacher_logits, center, student_temp, teacher_temp)
    return weighted_mean(per_head, head_weights)


def weighted_mean(per_head: torch.Tensor, head_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Average of the heads' losses with ``head_weights`` normalised to sum to 1 (equal if None)."""
    return (per_head * _normalised_weights(head_weights, len(per_head), per_head)).sum()


def cross_entropy_per_head(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
                           student_temp: float, teacher_temp: float) -> torch.Tensor:
    """``(H,)``: each head's cross-entropy, averaged over the batch and the cross-view pairs."""
    n_heads, n_views = student_logits.shape[:2]
    if teacher_logits.shape[0] != n_views:
        raise ValueError(f"teacher has {teacher_logits.shape[0]} views, student {n_views}")
    if n_views < 2:
        raise ValueError("DeSD needs at least two views")
    dtype = _at_least_float32(torch.promote_types(student_logits.dtype, teacher_logits.dtype))
    q = teacher_probabilities(teacher_logits.to(dtype), center.to(dtype), teacher_temp)  # (V, B, K)
    log_p = F.log_softmax(student_logits.to(dtype) / student_temp, dim=-1)  # (H, V, B, K)
    # ce[h, t, s] = mean_b -sum_k q[t, b, k] log_p[h, s, b, k]
    ce = -torch.einsum("tbk,hsbk->hts", q, log_p) / q.shape[1]
    off_diagonal = 1.0 - torch.eye(n_views, device=ce.device, dtype=ce.dtype)
    return (ce * off_diagonal).sum(dim=(1, 2)) / off_diagonal.sum()


def _normalised_weights(head_weights: Optional[Sequence[float]], n_heads: int,
                        like: torch.Tensor) -> torch.Tensor:
    if head_weights is None:
        return torch.full((n_heads,), 1.0 / n_heads, dtype=like.dtype, device=like.device)
    if len(head_weights) != n_heads:
        raise ValueError(f"{len(head_weights)} head weights for {n_heads} heads")
    w = torch.as_tensor(head_weights, dtype=like.dtype, device=like.device)
    if float(w.sum()) <= 0:
        raise ValueError("head_weights must not all be zero")
    return w / w.sum()


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """``c <- m c + (1 - m) mean(teacher logits)``, in place; the mean spans all processes.

    The mean is over every view and sample of the batch. Under ``torch.distributed``
    the sums and counts are all-reduced first, so N processes each holding 1/N of a
    batch produce the centre one process holding all of it would.

    Args:
        center: ``(1, K)`` float tensor, updated in place and returned.
        teacher_logits: ``(..., K)`` logits of the current batch.
        momentum: ``m``.
    """
    flat = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1])
    stats = torch.cat([flat.sum(dim=0), flat.new_tensor([flat.shape[0]])])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    batch_mean = stats[:-1] / stats[-1]
    center.mul_(momentum).add_(batch_mean.to(center.dtype).view_as(center), alpha=1.0 - momentum)
    return center


@torch.no_grad()
def mean_entropy(probabilities: torch.Tensor) -> float:
    """Mean Shannon entropy (nats) of the rows of ``probabilities`` (``(..., K)``)."""
    p = probabilities.float().reshape(-1, probabilities.shape[-1])
    return float(-(p * torch.log(p.clamp_min(1e-12))).sum(dim=1).mean())
