"""The Models Genesis transforms (Zhou et al. 2019, 2021) as pure functions of a batch.

Models Genesis restores a patch from four corruptions, each drawn with its own
probability and applied in this order: local voxel shuffling, a non-linear
intensity transform (a monotone Bezier curve), then in-painting *or*
out-painting. The paper works on CT clipped to [-1000, 1000] HU and scaled to
[0, 1]; nnU-Net's CT normalisation gives z-scored patches instead, so
:func:`genesis_corrupt` rescales every sample and channel to [0, 1] by its own
minimum and maximum, applies the transforms there (the curve maps [0, 1] onto
itself, painted noise is uniform in [0, 1]) and maps the result back onto the
patch's [min, max].

Batches are ``(B, C, *spatial)``; every sample draws its own transforms.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from nnunet_ssl.ssl.restoration import device_generator

# the paper's box sizes (fractions of the patch edge) and counts
INPAINT_EDGE = (1 / 6, 1 / 3)
INPAINT_BOXES = 5
OUTPAINT_FIRST_EDGE = (3 / 7, 4 / 7)
OUTPAINT_BOXES = 5
BOX_CONTINUE = 0.95  # each further box is drawn with this probability
CURVE_SAMPLES = 1000


def bezier_lookup(controls: torch.Tensor, n: int = CURVE_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted samples ``(xs, ys)``, each ``(R, n)``, of the cubic Bezier curves from (0, 0) to (1, 1).

    ``controls`` ``(R, 2, 2)`` holds the two inner control points ``(x, y)`` of each
    curve. x and y are sorted independently, as the Models Genesis code does, so
    the lookup is a non-decreasing map of [0, 1] onto [0, 1] even where the curve
    itself folds back.
    """
    t = torch.linspace(0, 1, n, device=controls.device, dtype=controls.dtype)
    weights = torch.stack([3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2], dim=0)  # Bernstein weights of P1, P2
    curve = torch.einsum("kn,rkd->rdn", weights, controls) + (t ** 3)  # P0 = 0, P3 = (1, 1)
    return curve[:, 0].sort(dim=1).values, curve[:, 1].sort(dim=1).values


def interpolate(values: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of each row of ``values`` ``(R, N)`` on its knots ``xs``, ``ys`` ``(R, K)``."""
    values = values.clamp(0, 1).contiguous()
    idx = torch.searchsorted(xs.contiguous(), values).clamp(1, xs.shape[1] - 1)
    x0, x1, y0, y1 = xs.gather(1, idx - 1), xs.gather(1, idx), ys.gather(1, idx - 1), ys.gather(1, idx)
    w = ((values - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return y0 + w * (y1 - y0)


def nonlinear_intensity(unit: torch.Tensor, controls: torch.Tensor, invert: torch.Tensor) -> torch.Tensor:
    """Map a [0, 1] batch through one Bezier curve per sample; ``invert`` (B,) flips it (``1 - curve``).

    Example:
        >>> x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 3)
        >>> straight = torch.tensor([[[1 / 3, 1 / 3], [2 / 3, 2 / 3]]])  # the identity curve
        >>> nonlinear_intensity(x, straight, torch.tensor([False])).flatten().tolist()
        [0.0, 0.5, 1.0]
    """
    b = unit.shape[0]
    xs, ys = bezier_lookup(controls.to(unit.device, unit.dtype))
    mapped = interpolate(unit.reshape(b, -1), xs, ys).reshape(unit.shape)
    flip = invert.to(unit.device).view(b, *[1] * (unit.dim() - 1))
    return torch.where(flip, 1 - mapped, mapped)


def local_shuffle(x: torch.Tensor, block: Sequence[int], selected: torch.Tensor,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Shuffle the voxels inside the selected blocks of an aligned grid (all channels alike).

    Args:
        x: ``(B, C, *spatial)``; not modified.
        block: Block edge per spatial axis. Voxels beyond the last whole block stay in place.
        selected: Boolean ``(B, n_blocks)`` (blocks in C order of the grid): which blocks to shuffle.
        generator: Source of the permutations (on ``x``'s device).

    Unlike the paper's 10,000 overlapping windows of random size, the blocks do not
    overlap, so every block keeps exactly its own voxel values.
    """
    spatial = x.shape[2:]
    grid = [s // b for s, b in zip(spatial, block)]
    region = tuple(slice(0, g * b) for g, b in zip(grid, block))
    inner = x[(..., *region)]
    b_, c = x.shape[:2]
    split = inner.reshape(b_, c, *[v for g, bb in zip(grid, block) for v in (g, bb)])
    nd = len(spatial)
    order = [0, 1] + [2 + 2 * i for i in range(nd)] + [3 + 2 * i for i in range(nd)]
    blocks = split.permute(order).reshape(b_, c, -1, math.prod(block))  # (B, C, n_blocks, V)
    keys = torch.rand(b_, blocks.shape[2], blocks.shape[3], generator=generator, device=x.device)
    # an unselected block keeps its order: its keys increase along the block
    keys = torch.where(selected.to(x.device)[..., None], keys, torch.arange(blocks.shape[3], device=x.device, dtype=keys.dtype))
    perm = keys.argsort(dim=-1)[:, None].expand_as(blocks)
    shuffled = blocks.gather(-1, perm)
    inverse = [0] * len(order)
    for i, o in enumerate(order):
        inverse[o] = i
    back = shuffled.reshape(b_, c, *grid, *block).permute(inverse).reshape(inner.shape)
    out = x.clone()
    out[(..., *region)] = back
    return out


def random_box(spatial: Sequence[int], edge: tuple[float, float], generator: Optional[torch.Generator] = None
               ) -> tuple[slice, ...]:
    """A box with per-axis edge drawn in ``[edge[0], edge[1]]`` of the axis (at least 1 voxel), placed at random.

    Example:
        >>> random_box((12, 12), (0.5, 0.5), torch.Generator().manual_seed(0))[0].stop \\
        ...     - random_box((12, 12), (0.5, 0.5), torch.Generator().manual_seed(0))[0].start
        6
    """
    box = []
    for s in spatial:
        lo, hi = max(1, int(edge[0] * s)), max(1, int(edge[1] * s))
        size = int(torch.randint(lo, hi + 1, (), generator=generator))
        start = int(torch.randint(0, s - size + 1, (), generator=generator))
        box.append(slice(start, start + size))
    return tuple(box)


def box_mask(spatial: Sequence[int], boxes: Sequence[tuple[slice, ...]], device=None) -> torch.Tensor:
    """Boolean mask of ``spatial`` shape, True inside any of ``boxes``."""
    mask = torch.zeros(tuple(spatial), dtype=torch.bool, device=device)
    for box in boxes:
        mask[box] = True
    return mask


def paint_boxes(spatial: Sequence[int], first_edge, edge, count: int,
                generator: Optional[torch.Generator] = None) -> list[tuple[slice, ...]]:
    """One box, then up to ``count - 1`` more, each drawn with probability :data:`BOX_CONTINUE`."""
    boxes = [random_box(spatial, first_edge, generator)]
    while len(boxes) < count and float(torch.rand((), generator=generator)) < BOX_CONTINUE:
        boxes.append(random_box(spatial, edge, generator))
    return boxes


def inpaint(unit: torch.Tensor, inside: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``noise`` where ``inside`` (broadcast over channels), ``unit`` elsewhere."""
    return torch.where(inside, noise, unit)


def outpaint(unit: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``unit`` inside the kept boxes ``keep``, ``noise`` outside them."""
    return torch.where(keep, unit, noise)


def unit_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x rescaled to [0, 1], minimum, range)`` per sample and channel (a constant channel maps to 0)."""
    flat = x.reshape(*x.shape[:2], -1)
    lo = flat.amin(dim=-1).view(*x.shape[:2], *[1] * (x.dim() - 2))
    span = (flat.amax(dim=-1).view_as(lo) - lo).clamp_min(1e-8)
    return (x - lo) / span, lo, span


def genesis_corrupt(data: torch.Tensor, settings, generator: Optional[torch.Generator] = None,
                    shuffle_block: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The Models Genesis corruption of a batch (a new tensor; ``data`` is not modified).

    ``settings`` holds the probabilities (:class:`~nnunet_ssl.ssl.genesis.settings.GenesisSettings`).
    Small decisions are drawn from ``generator`` (CPU); noise and permutations on ``data``'s device.
    """
    b, spatial = data.shape[0], data.shape[2:]
    unit, lo, span = unit_range(data.float())
    shuffle_block = tuple(shuffle_block or [max(1, s // 10) for s in spatial])
    draws = torch.rand(b, 5, generator=generator)
    on_device = device_generator(generator, data.device)

    n_blocks = math.prod(s // k for s, k in zip(spatial, shuffle_block))
    chosen = (torch.rand(b, n_blocks, generator=generator) < settings.shuffle_ratio) & \
        (draws[:, 0] < settings.local_rate)[:, None]
    if chosen.any():
        unit = local_shuffle(unit, shuffle_block, chosen, on_device)

    curve = draws[:, 1] < settings.nonlinear_rate
    if curve.any():
        controls = torch.rand(b, 2, 2, generator=generator)
        mapped = nonlinear_intensity(unit, controls, draws[:, 2] < settings.invert_rate)
        unit = torch.where(curve.to(data.device).view(b, *[1] * (data.dim() - 1)), mapped, unit)

    paint = draws[:, 3] < settings.paint_rate
    if paint.any():
        noise = torch.rand(unit.shape, generator=on_device, device=data.device, dtype=unit.dtype)
        painted = []
        for i in range(b):
            if not paint[i]:
                painted.append(unit[i])
            elif draws[i, 4] < settings.inpaint_rate:
                boxes = paint_boxes(spatial, INPAINT_EDGE, INPAINT_EDGE, INPAINT_BOXES, generator)
                painted.append(inpaint(unit[i], box_mask(spatial, boxes, data.device), noise[i]))
            else:
                boxes = paint_boxes(spatial, OUTPAINT_FIRST_EDGE, OUTPAINT_FIRST_EDGE, OUTPAINT_BOXES, generator)
                painted.append(outpaint(unit[i], box_mask(spatial, boxes, data.device), noise[i]))
        unit = torch.stack(painted)
    return (unit * span + lo).to(data.dtype)
