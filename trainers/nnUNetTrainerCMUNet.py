"""``nnUNetv2_train -tr nnUNetTrainerCMUNet``: the class for nnU-Net's trainer lookup.

The logic lives in :mod:`nnunet_ssl.ssl.cmunet`; this module only exposes the class (nnU-Net
imports the modules of this folder by file).
"""
from nnunet_ssl.ssl.cmunet.trainer import nnUNetTrainerCMUNet  # noqa: F401
