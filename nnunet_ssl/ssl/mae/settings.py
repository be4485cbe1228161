"""Settings of masked-image-modelling pretraining, read from an ``ssl_mae`` block of the plans.

Like the DeSD ``ssl`` block (:mod:`nnunet_ssl.desd.settings`), the settings live in
the plans configuration that is trained; names left out take the defaults below::

    "3d_fullres": {
        ...,
        "ssl_mae": {"mask_ratio": 0.6, "block_size": [4, 8, 8], "num_epochs": 200}
    }
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from nnunet_ssl.ssl.settings import PretextSettings, boolean, open_fraction, sizes

BLOCK_KEY = "ssl_mae"
# largest default block edge: SparK masks whole bottleneck cells; nnU-Net's deep strides (32) would
# leave only a few blocks per patch, so the default stops at 8 voxels (a divisor of the stride)
DEFAULT_MAX_BLOCK = 8


@dataclass(frozen=True)
class MAESettings(PretextSettings):
    """Masked reconstruction pretraining; the run length follows nnU-Net's default trainer.

    Example:
        >>> MAESettings.from_dict({"block_size": 8}).block_size
        (8,)
    """

    BLOCK: ClassVar[str] = BLOCK_KEY
    PARSERS: ClassVar[dict] = {"mask_ratio": open_fraction, "block_size": sizes, "norm_pix_loss": boolean,
                               "sparse": boolean}

    mask_ratio: float = 0.6
    # block edge per axis (one number: a cube); None: gcd(8, total encoder stride) per axis
    block_size: Optional[tuple[int, ...]] = None
    # MAE's norm_pix_loss: the target of each block is normalised by its own mean and std
    norm_pix_loss: bool = False
    # SparK: masked sites stay empty at every encoder stage (features re-masked after every conv block)
    sparse: bool = True

    def block_for(self, patch_size, strides) -> tuple[int, ...]:
        """The block size per axis for a patch and the encoder's per-stage strides (:func:`mask_block_for`).

        Example:
            >>> MAESettings().block_for([32, 64, 64], [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]])
            (4, 8, 8)
        """
        return mask_block_for(self.block_size, patch_size, strides, self.BLOCK)


def mask_block_for(block_size: Optional[tuple[int, ...]], patch_size, strides, block_name: str) -> tuple[int, ...]:
    """The mask's block size per axis: ``block_size`` (one number: every axis) or, for ``None``,
    ``gcd(8, total stride)`` per axis.

    Raises:
        ValueError: a block of the wrong number of axes, or one that does not tile the patch (the
            message names the setting ``block_name``'s ``block_size``).
    """
    ndim = len(patch_size)
    if block_size is None:
        total = np.prod(np.array(strides, dtype=int).reshape(len(strides), -1), axis=0)
        total = np.broadcast_to(total, (ndim,))
        block = tuple(math.gcd(DEFAULT_MAX_BLOCK, int(t)) for t in total)
    elif len(block_size) == 1:
        block = tuple(block_size) * ndim
    else:
        block = tuple(block_size)
    if len(block) != ndim:
        raise ValueError(f"{block_name} block_size {list(block)} has {len(block)} axes, the patch "
                         f"{list(patch_size)} {ndim}")
    if any(int(p) % b for p, b in zip(patch_size, block)):
        raise ValueError(f"{block_name} block_size {list(block)} does not tile the patch size "
                         f"{list(patch_size)}; choose divisors of the patch size")
    return block
