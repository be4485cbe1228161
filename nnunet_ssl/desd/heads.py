"""Projection heads: pooled encoder features -> K logits (DINO's ``DINOHead``).

Plain modules on every device. The last layer is weight-normalised with the gain frozen
at 1 (DINO's ``norm_last_layer=True``): the state dict holds one ``last_layer.weight`` (the
directions) per head, and the logits are ``F.linear(z, F.normalize(W, dim=1))``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-12  # as F.normalize


class ProjectionHead(nn.Module):
    """Three-layer MLP, L2 normalisation and a weight-normalised last layer of width ``out_dim``.

    ``in_dim -> hidden -> hidden -> bottleneck`` with GELU (and optional batch norm)
    between the layers and none after the last one, as DINO's head.

    Example:
        >>> head = ProjectionHead(32, out_dim=64, hidden_dim=16, bottleneck_dim=8)
        >>> head(torch.randn(4, 32)).shape
        torch.Size([4, 64])
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, use_bn: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim, hidden_dim, hidden_dim]
        for a, b in zip(dims[:-1], dims[1:]):
            layers.append(nn.Linear(a, b))
            if use_bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.GELU())
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The ``bottleneck_dim`` embedding before normalisation (what RankMe measures)."""
        return self.mlp(x)

    def prototypes(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of unit-length embeddings ``z``: ``F.linear(z, F.normalize(W, dim=1))``.

        Computed as ``(z W^T) / ||W_k||``, each output divided by its row's norm: the same
        values and gradients without a normalised copy of ``W`` (16.8M elements per head with
        K = 65536), which costs a full-size tensor in the forward and several in the backward.
        """
        weight = self.last_layer.weight
        return F.linear(z, weight) / torch.linalg.vector_norm(weight, dim=1).clamp_min(NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.embed(x), dim=-1))


class _GlobalAveragePool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feature_map):
        ctx.shape = feature_map.shape
        return feature_map.flatten(2).mean(dim=2)

    @staticmethod
    def backward(ctx, grad):
        n = ctx.shape[2:].numel()
        # an expanded (stride-0) view, where `mean`'s backward materialises a full-size tensor:
        # autograd then adds it in place into the gradient the next stage sends to this feature map
        return (grad / n).view(*grad.shape, *[1] * (len(ctx.shape) - 2)).expand(ctx.shape)


def global_average_pool(feature_map: torch.Tensor) -> torch.Tensor:
    """``(N, C, *spatial) -> (N, C)``, the mean over the spatial axes.

    The gradient is a broadcast view rather than a full-size tensor: the heads on the
    early, high-resolution stages then cost no full-size gradient copy of their own.

    Example:
        >>> global_average_pool(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 3])
    """
    return _GlobalAveragePool.apply(feature_map)
