"""``nnUNetv2_train -tr nnUNetTrainerModelsGenesis``: the class for nnU-Net's trainer lookup.

The logic lives in :mod:`nnunet_ssl.ssl.genesis`; this module only exposes the class (nnU-Net
imports the modules of this folder by file).
"""
from nnunet_ssl.ssl.genesis.trainer import nnUNetTrainerModelsGenesis  # noqa: F401
