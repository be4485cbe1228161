"""Quarter-turn rotations, their labels, and the network that classifies them (no nnU-Net).

Label ``k`` (0-3) means a rotation by ``90 * k`` degrees in a plane of two spatial
axes: :func:`torch.rot90` with ``k`` turns from the plane's first axis towards its
second. The plane's two edges must be equal for every rotation to keep the patch
shape; :func:`square_crop` cuts the longer edge to the shorter one (centred).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nnunet_ssl.ssl.contrastive import PooledHeadNetwork

ANGLES = (0, 90, 180, 270)


def angle_of(label: int) -> int:
    """The rotation, in degrees, that label ``label`` stands for.

    Example:
        >>> [angle_of(k) for k in range(4)]
        [0, 90, 180, 270]
    """
    return ANGLES[label]


def label_of(angle: int) -> int:
    """The label of a rotation by ``angle`` degrees (any multiple of 90, negative too).

    Example:
        >>> label_of(-90), label_of(450)
        (3, 1)
    """
    if angle % 90:
        raise ValueError(f"rotation {angle} is not a multiple of 90 degrees")
    return (angle // 90) % 4


def rotate(x: torch.Tensor, labels: torch.Tensor, plane: Sequence[int]) -> torch.Tensor:
    """Rotate every sample of ``x`` ``(B, C, *spatial)`` by its own ``labels[i]`` quarter turns in ``plane``.

    ``plane`` names two spatial axes (0 is the first axis after the channels).

    Example:
        >>> x = torch.tensor([[1, 2], [3, 4]]).view(1, 1, 2, 2)
        >>> rotate(x, torch.tensor([1]), (0, 1))[0, 0].tolist()
        [[2, 4], [1, 3]]
    """
    dims = (plane[0] + 1, plane[1] + 1)  # axes of one sample (C, *spatial)
    return torch.stack([torch.rot90(sample, int(k), dims) for sample, k in zip(x, labels)])


def square_crop(x: torch.Tensor, plane: Sequence[int]) -> torch.Tensor:
    """``x`` with the longer of the two ``plane`` axes cropped (centred) to the shorter's length."""
    a, b = plane[0] + 2, plane[1] + 2
    side = min(x.shape[a], x.shape[b])
    index = [slice(None)] * x.dim()
    for axis in (a, b):
        start = (x.shape[axis] - side) // 2
        index[axis] = slice(start, start + side)
    return x[tuple(index)]


class RotationNetwork(PooledHeadNetwork):
    """nnU-Net's U-Net with a linear head (``head.*``) on its average-pooled bottleneck; the decoder is
    kept untrained (:class:`~nnunet_ssl.ssl.contrastive.PooledHeadNetwork`)."""

    def __init__(self, unet: nn.Module, n_classes: int = len(ANGLES)):
        super().__init__(unet, nn.Linear(unet.encoder.output_channels[-1], n_classes))
