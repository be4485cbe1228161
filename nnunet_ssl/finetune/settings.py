"""Fine-tuning settings: a ``finetune`` block in the plans configuration.

Like the ``ssl`` block of pretraining, the settings live in the plans JSON, in
the configuration used for training, so they change without code edits and
are recorded with every checkpoint (nnU-Net stores the plans in ``init_args``)
and in the training log. Names left out take the defaults below.

Example plans fragment::

    "3d_fullres_ft": {
        "inherits_from": "3d_fullres",
        "finetune": {"num_epochs": 100, "unfreeze_epoch": 50, "encoder_lr_factor": 0.2}
    }

A trainer preset (``nnUNetTrainerUnfreezeAt33`` etc.) fixes some names; those
win over the block, and the log says so when the block disagrees, because the
trainer name is what nnU-Net writes into the results folder name.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class FinetuneSettings:
    """Every fine-tuning setting; ``None`` means "derived from the run length" as documented."""

    # training length; None keeps the trainer's (nnU-Net: 1000, presets their own)
    num_epochs: Optional[int] = None
    # nnUNetTrainerUnfreezeAtN: the encoder is frozen in epochs 0 .. unfreeze_epoch - 1
    unfreeze_epoch: int = 33
    # nnUNetTrainerGradualUnfreeze: epoch the deepest stage is unfrozen and epochs between stages
    # (None: a tenth of the run, and spaced so that the stem is unfrozen at half of it)
    gradual_start_epoch: Optional[int] = None
    gradual_interval: Optional[int] = None
    # nnUNetTrainerWarmup: epochs of linear warm-up (None: a twentieth of the run, at least 1)
    warmup_epochs: Optional[int] = None
    # nnUNetTrainerEncoderLR: encoder learning rate = factor * decoder learning rate
    encoder_lr_factor: float = 0.1

    def __post_init__(self):
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {self.num_epochs}")
        for name in ("unfreeze_epoch", "gradual_start_epoch", "gradual_interval", "warmup_epochs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not self.encoder_lr_factor >= 0:
            raise ValueError(f"encoder_lr_factor must be >= 0, got {self.encoder_lr_factor}")

    @classmethod
    def from_dict(cls, values: Optional[Mapping[str, Any]] = None) -> "FinetuneSettings":
        """Build settings from a (possibly partial) mapping; unknown names are an error.

        Example:
            >>> FinetuneSettings.from_dict({"unfreeze_epoch": 50}).unfreeze_epoch
            50
        """
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown finetune setting(s) {unknown}. Known settings: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any]) -> "FinetuneSettings":
        """Read the ``finetune`` block of an nnU-Net plans configuration (a dict)."""
        return cls.from_dict(configuration.get("finetune"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "FinetuneSettings":
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def apply_preset(settings: FinetuneSettings, preset: Mapping[str, Any]) -> tuple[FinetuneSettings, list[str]]:
    """Settings with a trainer preset's fixed values, and the names where the plans block disagreed.

    Example:
        >>> s, overridden = apply_preset(FinetuneSettings(unfreeze_epoch=50), {"unfreeze_epoch": 33})
        >>> s.unfreeze_epoch, overridden
        (33, ['unfreeze_epoch'])
    """
    defaults = FinetuneSettings()
    overridden = [k for k, v in preset.items()
                  if getattr(settings, k) != getattr(defaults, k) and getattr(settings, k) != v]
    return settings.replace(**preset), overridden
