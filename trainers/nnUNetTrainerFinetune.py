"""Fine-tuning trainers for ``nnUNetv2_train -tr NAME -pretrained_weights FILE``.

Point nnU-Net at this folder once: ``export nnUNet_extTrainer=/path/to/nnunet-ssl/trainers``.
The classes and their logic live in :mod:`nnunet_ssl.finetune`; this module only
exposes them to nnU-Net's trainer lookup (which imports the modules of this folder by file).
See ``docs/finetuning.md`` for what each trainer changes.
"""
from nnunet_ssl.finetune.trainers import (  # noqa: F401
    nnUNetTrainer_300epochs,
    nnUNetTrainerEncoderLR,
    nnUNetTrainerEncoderLR_100epochs,
    nnUNetTrainerEncoderLR_300epochs,
    nnUNetTrainerFinetune,
    nnUNetTrainerFrozenEncoder,
    nnUNetTrainerFrozenEncoder_100epochs,
    nnUNetTrainerFrozenEncoder_300epochs,
    nnUNetTrainerGradualUnfreeze,
    nnUNetTrainerGradualUnfreeze_100epochs,
    nnUNetTrainerGradualUnfreeze_300epochs,
    nnUNetTrainerUnfreezeAt33,
    nnUNetTrainerUnfreezeAt66,
    nnUNetTrainerUnfreezeAt_Demo,
    nnUNetTrainerUnfreezeAtN,
    nnUNetTrainerWarmup,
    nnUNetTrainerWarmup_100epochs,
    nnUNetTrainerWarmup_300epochs,
)

__all__ = [
    "nnUNetTrainer_300epochs",
    "nnUNetTrainerEncoderLR", "nnUNetTrainerEncoderLR_100epochs", "nnUNetTrainerEncoderLR_300epochs",
    "nnUNetTrainerFinetune",
    "nnUNetTrainerFrozenEncoder", "nnUNetTrainerFrozenEncoder_100epochs", "nnUNetTrainerFrozenEncoder_300epochs",
    "nnUNetTrainerGradualUnfreeze", "nnUNetTrainerGradualUnfreeze_100epochs",
    "nnUNetTrainerGradualUnfreeze_300epochs",
    "nnUNetTrainerUnfreezeAt33", "nnUNetTrainerUnfreezeAt66", "nnUNetTrainerUnfreezeAt_Demo",
    "nnUNetTrainerUnfreezeAtN",
    "nnUNetTrainerWarmup", "nnUNetTrainerWarmup_100epochs", "nnUNetTrainerWarmup_300epochs",
]
