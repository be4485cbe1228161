"""Block masks and the masked reconstruction loss (pure functions, no nnU-Net).

Masked image modelling for CNNs (SparK, Tian et al. 2023; MAE, He et al. 2022)
hides whole aligned blocks of the input and scores the reconstruction only where
it was hidden. A block that divides the encoder's total stride masks whole
bottleneck cells, so no feature of the deepest stage sees a half-hidden block.
The block masks and the masked error are shared with the other restoration
methods (:mod:`nnunet_ssl.ssl.restoration`).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from nnunet_ssl.ssl.restoration import block_grid, block_mask, masked_mse

__all__ = ["block_grid", "block_mask", "normalise_blocks", "masked_reconstruction_loss"]


def normalise_blocks(target: torch.Tensor, block: Union[int, Sequence[int]], eps: float = 1e-6) -> torch.Tensor:
    """``target`` with every block of every channel normalised by its own mean and std (MAE's norm_pix_loss)."""
    spatial = target.shape[2:]
    block = (int(block),) * len(spatial) if isinstance(block, int) else tuple(int(b) for b in block)
    grid = block_grid(spatial, block)
    # (B, C, g0, b0, g1, b1, ...): statistics over the b axes
    split = target.reshape(*target.shape[:2], *[v for g, b in zip(grid, block) for v in (g, b)])
    axes = tuple(range(3, split.ndim, 2))
    mean = split.mean(dim=axes, keepdim=True)
    var = split.var(dim=axes, keepdim=True, unbiased=False)
    return ((split - mean) / (var + eps).sqrt()).reshape(target.shape)


def masked_reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               norm_pix_loss: bool = False,
                               block: Union[int, Sequence[int], None] = None) -> torch.Tensor:
    """Mean squared error over the masked voxels (all channels) only.

    Args:
        prediction: ``(B, C, *spatial)``.
        target: The unmasked input, same shape.
        mask: Boolean ``(B, 1, *spatial)`` (or ``(B, C, *spatial)``), True where the input was hidden.
        norm_pix_loss: Compare with the target normalised per block (needs ``block``).
        block: Block size of the mask, for ``norm_pix_loss``.

    Example:
        >>> p, t = torch.tensor([1., 5.]).view(1, 1, 2), torch.tensor([0., 2.]).view(1, 1, 2)
        >>> masked_reconstruction_loss(p, t, torch.tensor([True, False]).view(1, 1, 2)).item()
        1.0
    """
    # float32 whatever autocast predicts in: a float16 sum over a patch overflows
    prediction, target = prediction.float(), target.float()
    if norm_pix_loss:
        if block is None:
            raise ValueError("norm_pix_loss needs the block size")
        target = normalise_blocks(target, block)
    return masked_mse(prediction, target, mask)
