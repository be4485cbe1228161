"""``nnUNetv2_train -tr nnUNetTrainerInpainting``: the class for nnU-Net's trainer lookup.

The logic lives in :mod:`nnunet_ssl.ssl.inpainting`; this module only exposes the class (nnU-Net
imports the modules of this folder by file).
"""
from nnunet_ssl.ssl.inpainting.trainer import nnUNetTrainerInpainting  # noqa: F401
