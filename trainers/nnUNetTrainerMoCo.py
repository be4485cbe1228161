"""``nnUNetv2_train -tr nnUNetTrainerMoCo``: the class for nnU-Net's trainer lookup.

The logic lives in :mod:`nnunet_ssl.ssl.moco`; this module only exposes the class (nnU-Net
imports the modules of this folder by file).
"""
from nnunet_ssl.ssl.moco.trainer import nnUNetTrainerMoCo  # noqa: F401
