"""DeSD pretraining trainers for ``nnUNetv2_train -tr``.

Point nnU-Net at this folder once: ``export nnUNet_extTrainer=/path/to/nnunet-ssl/trainers``.
The logic lives in :mod:`nnunet_ssl.desd`; this module only exposes the classes
to nnU-Net's trainer lookup (which imports the modules of this folder by file).
"""
from nnunet_ssl.desd.trainer import nnUNetTrainerDeSD



class nnUNetTrainerDeSD_SA(nnUNetTrainerDeSD):
    """DeSD with the symmetry augmentation (paper 3.7.3).

    The SSL dataset carries the contralateral image as its second channel (channel 1,
    e.g. from ``nnunet-ssl preprocess-ct --channels ct+contra``) unless the plans'
    ``ssl.symmetry_channel`` names another; the encoder sees the CT channel only.
    """

    def configure_ssl_settings(self, settings):
        if settings.symmetry_channel is None:
            settings = settings.replace(symmetry_channel=1)
        return settings


__all__ = ["nnUNetTrainerDeSD", "nnUNetTrainerDeSD_SA"]
