"""DeSD pretraining trainers for ``nnUNetv2_train -tr``.

Point nnU-Net at this folder once: ``export nnUNet_extTrainer=/path/to/nnunet-ssl/trainers``.
The logic lives in :mod:`nnunet_ssl.desd`; this module only exposes the classes
to nnU-Net's trainer lookup (which imports the modules of this folder by file).
"""
from nnunet_ssl.desd.trainer import nnUNetTrainerDeSD

__all__ = ["nnUNetTrainerDeSD"]
