"""Masked-image-modelling pretraining trainer for ``nnUNetv2_train -tr nnUNetTrainerMAE``.

The logic lives in :mod:`nnunet_ssl.ssl.mae`; this module only exposes the class to
nnU-Net's trainer lookup (which imports the modules of this folder by file).
"""
from nnunet_ssl.ssl.mae.trainer import nnUNetTrainerMAE  # noqa: F401
