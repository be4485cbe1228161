"""``nnUNetv2_train -tr nnUNetTrainerSimCLR``: the class for nnU-Net's trainer lookup.

The logic lives in :mod:`nnunet_ssl.ssl.simclr`; this module only exposes the class (nnU-Net
imports the modules of this folder by file).
"""
from nnunet_ssl.ssl.simclr.trainer import nnUNetTrainerSimCLR  # noqa: F401
