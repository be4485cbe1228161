"""Settings of CM-UNet (contrastive + masked) pretraining, read from an ``ssl_cmunet`` block of the plans::

    "3d_fullres": {..., "ssl_cmunet": {"mask_ratio": 0.6, "contrastive_weight": 0.5, "num_epochs": 200}}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from nnunet_ssl.ssl.mae.settings import mask_block_for
from nnunet_ssl.ssl.settings import ContrastiveSettings, boolean, open_fraction, positive_float, sizes


@dataclass(frozen=True)
class CMUNetSettings(ContrastiveSettings):
    """The contrastive settings plus the mask (as ``ssl_mae``'s), the target branch's momentum and the
    weight of the contrastive term.

    Example:
        >>> CMUNetSettings.from_dict({"mask_ratio": 0.75}).block_for([32, 32, 32], [[1, 1, 1], [2, 2, 2]])
        (2, 2, 2)
    """

    BLOCK: ClassVar[str] = "ssl_cmunet"
    PARSERS: ClassVar[dict] = {**ContrastiveSettings.PARSERS, "mask_ratio": open_fraction, "block_size": sizes,
                               "momentum": open_fraction, "contrastive_weight": positive_float, "sparse": boolean}

    temperature: float = 0.2
    mask_ratio: float = 0.6
    block_size: Optional[tuple[int, ...]] = None  # as ssl_mae: None is gcd(8, total encoder stride) per axis
    momentum: float = 0.99  # target branch: theta_t <- m theta_t + (1 - m) theta_online after every step
    contrastive_weight: float = 1.0  # loss = masked reconstruction + weight * InfoNCE
    sparse: bool = True  # as ssl_mae: masked sites kept empty at every encoder stage of the online branch

    def block_for(self, patch_size, strides) -> tuple[int, ...]:
        """The mask's block size per axis, by ``ssl_mae``'s rule (:func:`~nnunet_ssl.ssl.mae.settings.mask_block_for`)."""
        return mask_block_for(self.block_size, patch_size, strides, self.BLOCK)
