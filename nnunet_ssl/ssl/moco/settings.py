"""Settings of MoCo v2 pretraining, read from an ``ssl_moco`` block of the plans::

    "3d_fullres": {..., "ssl_moco": {"queue_size": 1024, "momentum": 0.99, "num_epochs": 200}}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nnunet_ssl.ssl.settings import ContrastiveSettings, open_fraction, positive_int


@dataclass(frozen=True)
class MoCoSettings(ContrastiveSettings):
    """The contrastive settings plus the queue and the key encoder's momentum.

    Example:
        >>> MoCoSettings.from_dict({"queue_size": 256}).queue_size
        256
    """

    BLOCK: ClassVar[str] = "ssl_moco"
    PARSERS: ClassVar[dict] = {**ContrastiveSettings.PARSERS, "queue_size": positive_int, "momentum": open_fraction}

    temperature: float = 0.2  # MoCo v2's
    # negatives kept from earlier batches; MoCo's 65536 is for ImageNet-sized sets, a CT set of a few
    # hundred scans gives a few thousand distinct patches per epoch
    queue_size: int = 4096
    momentum: float = 0.99  # key encoder: theta_k <- m theta_k + (1 - m) theta_q after every step
