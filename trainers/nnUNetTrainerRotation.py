"""``nnUNetv2_train -tr nnUNetTrainerRotation``: the class for nnU-Net's trainer lookup.

The logic lives in :mod:`nnunet_ssl.ssl.rotation`; this module only exposes the class (nnU-Net
imports the modules of this folder by file).
"""
from nnunet_ssl.ssl.rotation.trainer import nnUNetTrainerRotation  # noqa: F401
