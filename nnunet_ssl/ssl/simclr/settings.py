"""Settings of SimCLR pretraining, read from an ``ssl_simclr`` block of the plans::

    "3d_fullres": {..., "ssl_simclr": {"temperature": 0.1, "min_scale": 0.5, "num_epochs": 200}}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nnunet_ssl.ssl.settings import ContrastiveSettings


@dataclass(frozen=True)
class SimCLRSettings(ContrastiveSettings):
    """The views, the projection and the temperature (:class:`~nnunet_ssl.ssl.settings.ContrastiveSettings`).

    Example:
        >>> SimCLRSettings.from_dict({"temperature": 0.2}).temperature
        0.2
    """

    BLOCK: ClassVar[str] = "ssl_simclr"
