"""Pure functions shared by the restoration methods: block masks, the masked error, the score.

Every restoration method corrupts the patch, lets the U-Net predict the original
and scores the prediction on a boolean loss mask (the hidden blocks for MAE and
in-painting, the whole patch for Models Genesis); none of this needs nnU-Net.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
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


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the voxels (all channels) where ``mask`` is True, in float32.

    Args:
        prediction: ``(B, C, *spatial)``.
        target: Same shape.
        mask: Boolean ``(B, 1, *spatial)`` or ``(B, C, *spatial)``.

    Example:
        >>> p, t = torch.tensor([1., 5.]).view(1, 1, 2), torch.tensor([0., 2.]).view(1, 1, 2)
        >>> masked_mse(p, t, torch.tensor([True, True]).view(1, 1, 2)).item()
        5.0
    """
    # float32 whatever autocast predicts in: a float16 sum over a patch overflows
    prediction, target = prediction.float(), target.float()
    mask = mask.expand_as(prediction)
    n = mask.sum()
    # where, not a product: whatever the prediction holds outside the mask (even inf) cannot reach the loss
    squared = torch.where(mask, (prediction - target) ** 2, prediction.new_zeros(()))
    return squared.sum() / n.clamp(min=1)


def reconstruction_score(loss, baseline) -> float:
    """``1 - sum(loss) / sum(baseline)``: the share of the error of predicting 0 that the network removes.

    Example:
        >>> reconstruction_score([0.25, 0.25], [1.0, 1.0])
        0.75
    """
    total = float(np.sum(baseline))
    return float(1.0 - np.sum(loss) / total) if total > 0 else float("nan")


def device_generator(generator: Optional[torch.Generator], device: Union[str, torch.device]) -> torch.Generator:
    """A generator on ``device`` seeded from ``generator``: large random tensors are drawn where they are used.

    The same state of ``generator`` gives the same draws on the same device.

    Example:
        >>> a = torch.rand(3, generator=device_generator(torch.Generator().manual_seed(0), "cpu"))
        >>> torch.equal(a, torch.rand(3, generator=device_generator(torch.Generator().manual_seed(0), "cpu")))
        True
    """
    seed = int(torch.randint(0, 2 ** 62, (), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)
