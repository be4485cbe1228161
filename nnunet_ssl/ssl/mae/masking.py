"""Block masks and the masked reconstruction loss (pure functions, no nnU-Net).

Masked image modelling for CNNs (SparK, Tian et al. 2023; MAE, He et al. 2022)
hides whole aligned blocks of the input and scores the reconstruction only where
it was hidden. A block that divides the encoder's total stride masks whole
bottleneck cells, so no feature of the deepest stage sees a half-hidden block.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch


def block_grid(spatial: Sequence[int], block: Sequence[int]) -> tuple[int, ...]:
    """Blocks per axis of a patch of size ``spatial`` cut into blocks of size ``block``.

    Raises:
        ValueError: an axis whose size is not a multiple of its block size.

    Example:
        >>> block_grid((32, 64, 64), (4, 8, 8))
        (8, 8, 8)
    """
    if len(spatial) != len(block):
        raise ValueError(f"block size {list(block)} has {len(block)} axes, the patch {list(spatial)} {len(spatial)}")
    for s, b in zip(spatial, block):
        if b < 1 or s % b:
            raise ValueError(f"patch size {list(spatial)} is not a multiple of the block size {list(block)}")
    return tuple(s // b for s, b in zip(spatial, block))


def block_mask(shape: Sequence[int], block: Union[int, Sequence[int]], ratio: float,
               generator: Optional[torch.Generator] = None, device: Union[str, torch.device, None] = None
               ) -> torch.Tensor:
    """A boolean mask ``(B, 1, *spatial)`` that is True on ``round(ratio * blocks)`` whole blocks per sample.

    Args:
        shape: Shape of the batch to mask, ``(B, C, *spatial)``.
        block: Block size per spatial axis (an int: the same on every axis).
        ratio: Fraction of the blocks masked, exactly the same number in every sample.
        generator: Source of randomness (CPU); the same seed gives the same mask.
        device: Device of the returned mask (drawn on the CPU, expanded there).

    Example:
        >>> m = block_mask((2, 1, 8, 8, 8), 4, 0.5, torch.Generator().manual_seed(0))
        >>> m.shape, m[0].float().mean().item()
        (torch.Size([2, 1, 8, 8, 8]), 0.5)
    """
    spatial = tuple(int(s) for s in shape[2:])
    block = (int(block),) * len(spatial) if isinstance(block, int) else tuple(int(b) for b in block)
    grid = block_grid(spatial, block)
    if not 0 <= ratio <= 1:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    n_blocks, batch = math.prod(grid), int(shape[0])
    n_masked = int(round(ratio * n_blocks))
    # a random permutation per sample: its first n_masked blocks are hidden
    order = torch.rand(batch, n_blocks, generator=generator).argsort(dim=1)
    coarse = torch.zeros(batch, n_blocks, dtype=torch.bool)
    coarse.scatter_(1, order[:, :n_masked], True)
    mask = coarse.view(batch, 1, *grid).to(device)
    for axis, size in enumerate(block):
        mask = mask.repeat_interleave(size, dim=axis + 2)
    return mask


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
    mask = mask.expand_as(prediction)
    n = mask.sum()
    # where, not a product: whatever the prediction holds outside the mask (even inf) cannot reach the loss
    squared = torch.where(mask, (prediction - target) ** 2, prediction.new_zeros(()))
    return squared.sum() / n.clamp(min=1)
