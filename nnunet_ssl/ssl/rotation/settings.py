"""Settings of rotation pretraining, read from an ``ssl_rotation`` block of the plans::

    "3d_fullres": {..., "ssl_rotation": {"plane": [1, 2], "num_epochs": 200}}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from nnunet_ssl.ssl.settings import BadSetting, PretextSettings


def _plane(value) -> Optional[tuple[int, int]]:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2 or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value) or value[0] == value[1]:
        raise BadSetting("two different spatial axes (e.g. [1, 2])")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class RotationSettings(PretextSettings):
    """The plane of the quarter-turn rotations.

    Example:
        >>> RotationSettings.from_dict({}).plane_for([32, 64, 64])
        (1, 2)
    """

    BLOCK: ClassVar[str] = "ssl_rotation"
    PARSERS: ClassVar[dict] = {"plane": _plane}

    # two spatial axes of nnU-Net's (transposed) patch; None: the last two, the in-plane axes of
    # thick-slice CT, whose slice axis nnU-Net puts first
    plane: Optional[tuple[int, int]] = None

    def plane_for(self, patch_size) -> tuple[int, int]:
        """The rotation plane for a patch.

        Raises:
            ValueError: an axis the patch does not have.
        """
        ndim = len(patch_size)
        plane = self.plane if self.plane is not None else (ndim - 2, ndim - 1)
        if max(plane) >= ndim:
            raise ValueError(f"{self.BLOCK} plane {list(plane)} names an axis the {ndim}-D patch "
                             f"{list(patch_size)} does not have (axes 0 to {ndim - 1})")
        return tuple(plane)
