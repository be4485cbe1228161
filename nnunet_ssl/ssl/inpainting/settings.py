"""Settings of in-painting pretraining, read from an ``ssl_inpainting`` block of the plans::

    "3d_fullres": {..., "ssl_inpainting": {"ratio": 0.25, "cube_size": [8, 16, 16], "fill": "noise"}}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from nnunet_ssl.ssl.inpainting.masks import FILLS, default_cube
from nnunet_ssl.ssl.settings import PretextSettings, choice, open_fraction, sizes


@dataclass(frozen=True)
class InpaintingSettings(PretextSettings):
    """Share of the patch hidden, cube size and fill.

    Example:
        >>> InpaintingSettings.from_dict({"fill": "noise"}).cube_for([32, 64, 64])
        (8, 16, 16)
    """

    BLOCK: ClassVar[str] = "ssl_inpainting"
    PARSERS: ClassVar[dict] = {"ratio": open_fraction, "cube_size": sizes, "fill": choice(*FILLS)}

    ratio: float = 0.25
    # cube edge per axis (one number: the same on every axis); None: about a quarter of the patch edge
    cube_size: Optional[tuple[int, ...]] = None
    # "white": the patch's maximum (the reference task's white patches); "noise": Gaussian noise
    fill: str = "white"

    def cube_for(self, patch_size) -> tuple[int, ...]:
        """The cube edge per axis for a patch.

        Raises:
            ValueError: a cube of the wrong number of axes or one that does not tile the patch.
        """
        ndim = len(patch_size)
        if self.cube_size is None:
            return default_cube(patch_size)
        cube = self.cube_size * ndim if len(self.cube_size) == 1 else self.cube_size
        if len(cube) != ndim or any(int(p) % c for p, c in zip(patch_size, cube)):
            raise ValueError(f"{self.BLOCK} cube_size {list(cube)} does not tile the patch size {list(patch_size)}; "
                             "choose one divisor of the patch edge per axis")
        return tuple(cube)
