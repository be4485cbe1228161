"""Cube masks and fills of the in-painting pretext task (pure functions, no nnU-Net).

The in-painting pretext task (Pathak et al. 2016; the "white patch" reference task of
the ASPECTS pretext-task paper, EMBC 2025) hides cubes of the patch behind a
constant or noise and asks for the original there. Here the cubes are the cells of
an aligned grid (:func:`~nnunet_ssl.ssl.restoration.block_mask`, so the hidden share
is exact), shifted by a random offset per sample (wrapping round the patch) so
that their edges fall anywhere.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from nnunet_ssl.ssl.restoration import block_mask, device_generator

FILLS = ("white", "noise")


def default_cube(patch_size: Sequence[int], parts: int = 4) -> tuple[int, ...]:
    """Per axis, the largest divisor of the patch edge that is at most a ``parts``-th of it (at least 1).

    Example:
        >>> default_cube([32, 40, 48])
        (8, 10, 12)
    """
    out = []
    for p in (int(v) for v in patch_size):
        out.append(max([d for d in range(1, max(1, p // parts) + 1) if p % d == 0]))
    return tuple(out)


def cube_mask(shape: Sequence[int], cube: Sequence[int], ratio: float,
              generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """Boolean ``(B, 1, *spatial)``: exactly ``round(ratio * cubes)`` grid cubes per sample, shifted at random.

    Example:
        >>> m = cube_mask((2, 1, 8, 8), (4, 4), 0.5, torch.Generator().manual_seed(0))
        >>> m.float().mean(dim=(1, 2, 3)).tolist()
        [0.5, 0.5]
    """
    mask = block_mask(shape, tuple(cube), ratio, generator, device)
    dims = tuple(range(1, len(shape) - 1))  # the spatial axes of one sample (1, *spatial)
    return torch.stack([torch.roll(m, [int(torch.randint(0, c, (), generator=generator)) for c in cube], dims)
                        for m in mask])


def fill_values(data: torch.Tensor, fill: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """What hides the cubes: ``"white"``, each sample and channel's maximum; ``"noise"``, Gaussian noise
    with each sample and channel's mean and standard deviation. Same shape as ``data`` (or broadcastable)."""
    flat = data.reshape(*data.shape[:2], -1).float()
    per = (*data.shape[:2], *[1] * (data.dim() - 2))
    if fill == "white":
        return flat.amax(dim=-1).view(per).to(data.dtype)
    if fill == "noise":
        noise = torch.randn(data.shape, generator=device_generator(generator, data.device), device=data.device)
        return (noise * flat.std(dim=-1).view(per) + flat.mean(dim=-1).view(per)).to(data.dtype)
    raise ValueError(f"unknown fill {fill!r}; choose one of {list(FILLS)}")


def inpainting_corrupt(data: torch.Tensor, cube: Sequence[int], ratio: float, fill: str,
                       generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(corrupted, mask)``: ``data`` with the masked cubes (all channels) replaced by the fill.

    ``data`` is not modified.
    """
    mask = cube_mask(data.shape, cube, ratio, generator, data.device)
    return torch.where(mask, fill_values(data, fill, generator), data), mask
