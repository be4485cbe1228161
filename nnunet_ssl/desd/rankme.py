"""RankMe (Garrido et al. 2023): the effective rank of a set of embeddings.

For an embedding matrix ``Z`` (N x D) with singular values ``s_k``, let
``p_k = s_k / sum(s) + eps``; RankMe is ``exp(-sum_k p_k log p_k)``. It lies between 1
(all embeddings on one line: collapse) and ``min(N, D)``; a rank-r matrix with equal
singular values gives r.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

EPS = 1e-7


@torch.no_grad()
def rankme(embeddings: torch.Tensor, eps: float = EPS) -> float:
    """Effective rank of ``embeddings`` (``(N, D)``).

    Example:
        >>> round(rankme(torch.eye(4)), 3)
        4.0
        >>> round(rankme(torch.ones(10, 3)), 3)
        1.0
    """
    z = embeddings.detach().double()
    s = torch.linalg.svdvals(z)
    if float(s.sum()) == 0.0:
        return 1.0  # all-zero embeddings: as collapsed as it gets
    p = s / s.sum() + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


@torch.no_grad()
def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate the rows every process holds (the tensor itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])
