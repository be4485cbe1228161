"""Settings of masked-image-modelling pretraining, read from an ``ssl_mae`` block of the plans.

Like the DeSD ``ssl`` block (:mod:`nnunet_ssl.desd.settings`), the settings live in
the plans configuration that is trained; names left out take the defaults below::

    "3d_fullres": {
        ...,
        "ssl_mae": {"mask_ratio": 0.6, "block_size": [4, 8, 8], "num_epochs": 200}
    }
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional

BLOCK_KEY = "ssl_mae"
# largest default block edge: SparK masks whole bottleneck cells; nnU-Net's deep strides (32) would
# leave only a few blocks per patch, so the default stops at 8 voxels (a divisor of the stride)
DEFAULT_MAX_BLOCK = 8


@dataclass(frozen=True)
class MAESettings:
    """Masked reconstruction pretraining; the run length follows nnU-Net's default trainer."""

    mask_ratio: float = 0.6
    # block edge per axis (one number: a cube); None: gcd(8, total encoder stride) per axis
    block_size: Optional[tuple[int, ...]] = None
    # MAE's norm_pix_loss: the target of each block is normalised by its own mean and std
    norm_pix_loss: bool = False
    num_epochs: int = 1000
    num_iterations_per_epoch: int = 250
    num_val_iterations_per_epoch: int = 50

    @classmethod
    def from_dict(cls, values: Optional[Mapping[str, Any]] = None) -> "MAESettings":
        """Validate a (possibly partial) mapping: unknown names and wrong types are refused by name.

        Example:
            >>> MAESettings.from_dict({"block_size": 8}).block_size
            (8,)
        """
        values = dict(values or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown {BLOCK_KEY} setting(s) {unknown}; known: {known}")

        def bad(name: str, what: str):
            return ValueError(f"{BLOCK_KEY} setting '{name}' must be {what}, got {json.dumps(values[name])}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()

        out = {}
        for name, value in values.items():
            if name == "mask_ratio":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                    raise bad(name, "a number between 0 and 1 (e.g. 0.6)")
                out[name] = float(value)
            elif name == "block_size":
                if value is None:
                    continue
                sizes = [value] if not isinstance(value, (list, tuple)) else list(value)
                if not sizes or not all(is_int(v) and v >= 1 for v in sizes):
                    raise bad(name, "a positive integer or a list of them (e.g. [4, 8, 8])")
                out[name] = tuple(int(v) for v in sizes)
            elif name == "norm_pix_loss":
                if not isinstance(value, bool):
                    raise bad(name, "true or false")
                out[name] = value
            else:  # the run length
                if not is_int(value) or value < 1:
                    raise bad(name, "a positive integer")
                out[name] = int(value)
        return cls(**out)

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any]) -> "MAESettings":
        """Read the ``ssl_mae`` block of an nnU-Net plans configuration (a dict)."""
        return cls.from_dict(configuration.get(BLOCK_KEY))

    def block_for(self, patch_size, strides) -> tuple[int, ...]:
        """The block size per axis for a patch and the encoder's per-stage strides.

        The default is ``gcd(8, total stride)`` per axis; a single given number is used on every axis.

        Raises:
            ValueError: a block of the wrong number of axes, or one that does not tile the patch.

        Example:
            >>> MAESettings().block_for([32, 64, 64], [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]])
            (4, 8, 8)
        """
        import math

        import numpy as np

        ndim = len(patch_size)
        if self.block_size is None:
            total = np.prod(np.array(strides, dtype=int).reshape(len(strides), -1), axis=0)
            total = np.broadcast_to(total, (ndim,))
            block = tuple(math.gcd(DEFAULT_MAX_BLOCK, int(t)) for t in total)
        elif len(self.block_size) == 1:
            block = self.block_size * ndim
        else:
            block = self.block_size
        if len(block) != ndim:
            raise ValueError(f"{BLOCK_KEY} block_size {list(block)} has {len(block)} axes, the patch "
                             f"{list(patch_size)} {ndim}")
        if any(int(p) % b for p, b in zip(patch_size, block)):
            raise ValueError(f"{BLOCK_KEY} block_size {list(block)} does not tile the patch size "
                             f"{list(patch_size)}; choose divisors of the patch size")
        return block

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["block_size"] is not None:
            d["block_size"] = list(d["block_size"])
        return d
