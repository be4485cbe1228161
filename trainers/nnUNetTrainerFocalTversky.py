"""Focal Tversky trainers for ``nnUNetv2_train -tr NAME`` (with or without ``-pretrained_weights``).

The classes and their logic live in :mod:`nnunet_ssl.losses`; this module only
exposes them to nnU-Net's trainer lookup. See ``docs/multi-input.md``.
"""
from nnunet_ssl.losses.trainers import (  # noqa: F401
    nnUNetTrainerEncoderLRFocalTversky,
    nnUNetTrainerFocalTversky,
    nnUNetTrainerFrozenEncoderFocalTversky,
    nnUNetTrainerGradualUnfreezeFocalTversky,
    nnUNetTrainerUnfreezeAtNFocalTversky,
    nnUNetTrainerWarmupFocalTversky,
)

__all__ = [
    "nnUNetTrainerEncoderLRFocalTversky", "nnUNetTrainerFocalTversky",
    "nnUNetTrainerFrozenEncoderFocalTversky", "nnUNetTrainerGradualUnfreezeFocalTversky",
    "nnUNetTrainerUnfreezeAtNFocalTversky", "nnUNetTrainerWarmupFocalTversky",
]
