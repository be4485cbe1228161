"""Settings of Models Genesis pretraining, read from an ``ssl_genesis`` block of the plans::

    "3d_fullres": {..., "ssl_genesis": {"paint_rate": 0.9, "inpaint_rate": 0.2, "num_epochs": 200}}

The probabilities are those of the Models Genesis code (``config.py`` there):
non-linear transform 0.9, local shuffling 0.5, painting 0.9 of which in-painting
0.2 and out-painting the rest. Its flips (augmentation of input and target alike)
are left to nnU-Net's mirroring.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from nnunet_ssl.ssl.settings import PretextSettings, probability, sizes


@dataclass(frozen=True)
class GenesisSettings(PretextSettings):
    """Each transform's probability, and the local-shuffle blocks.

    Example:
        >>> GenesisSettings.from_dict({"inpaint_rate": 0.5}).outpaint_rate
        0.5
    """

    BLOCK: ClassVar[str] = "ssl_genesis"
    PARSERS: ClassVar[dict] = {"nonlinear_rate": probability, "invert_rate": probability,
                               "local_rate": probability, "shuffle_ratio": probability,
                               "shuffle_block": sizes, "paint_rate": probability, "inpaint_rate": probability}

    nonlinear_rate: float = 0.9
    # share of the curves turned into 1 - curve (the paper's code flips half of them)
    invert_rate: float = 0.5
    local_rate: float = 0.5
    # share of the blocks of a shuffled patch that are shuffled: the paper's 10,000 windows of up to a
    # tenth of its 64x64x32 cube's edges cover about 85% of it (1 - exp(-10,000 x 24.5 / 131,072))
    shuffle_ratio: float = 0.85
    # block edge per axis (one number: a cube); None: a tenth of the patch edge (at least 1)
    shuffle_block: Optional[tuple[int, ...]] = None
    paint_rate: float = 0.9
    # a painted patch is in-painted with this probability, out-painted otherwise
    inpaint_rate: float = 0.2

    @property
    def outpaint_rate(self) -> float:
        return 1.0 - self.inpaint_rate

    def shuffle_block_for(self, patch_size) -> tuple[int, ...]:
        """The local-shuffle block edge per axis for a patch.

        Raises:
            ValueError: a block of the wrong number of axes or larger than the patch.

        Example:
            >>> GenesisSettings().shuffle_block_for([32, 64, 64])
            (3, 6, 6)
        """
        ndim = len(patch_size)
        if self.shuffle_block is None:
            return tuple(max(1, int(p) // 10) for p in patch_size)
        block = self.shuffle_block * ndim if len(self.shuffle_block) == 1 else self.shuffle_block
        if len(block) != ndim or any(b > int(p) for b, p in zip(block, patch_size)):
            raise ValueError(f"{self.BLOCK} shuffle_block {list(block)} does not fit the patch size "
                             f"{list(patch_size)}: give one edge per axis, each at most the patch edge")
        return tuple(block)
