"""Trainers that train with the focal Tversky loss instead of nnU-Net's Dice + cross-entropy.

:class:`FocalTverskyMixin` changes one thing, ``_build_loss``; put it in front of
any nnU-Net trainer. The classes here are that mixin in front of
``nnUNetTrainer`` and in front of each fine-tuning strategy of
:mod:`nnunet_ssl.finetune.trainers`, so freezing, unfreezing and learning-rate
schedules work unchanged (``finetune`` block), and the loss reads the
``focal_tversky`` block of the same plans configuration.

Deep supervision keeps nnU-Net's weights: the mixin asks the trainer below it
for its loss and wraps the focal Tversky loss in nnU-Net's
``DeepSupervisionWrapper`` with that loss's weights (halving per resolution,
the lowest output left out, normalised to sum 1).
"""
from __future__ import annotations

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ssl.finetune.trainers import (
    nnUNetTrainerEncoderLR, nnUNetTrainerFrozenEncoder, nnUNetTrainerGradualUnfreeze, nnUNetTrainerUnfreezeAtN,
    nnUNetTrainerWarmup)
from nnunet_ssl.losses.focal_tversky import FocalTverskyLoss, FocalTverskySettings


class FocalTverskyMixin:
    """``_build_loss`` with the focal Tversky loss; settings from the plans' ``focal_tversky`` block.

    Softmax outputs with label maps, or sigmoid outputs with nnU-Net's regions
    (``label_manager.has_regions``); nnU-Net's ignore label and ``batch_dice``
    are honoured. No cross-entropy term is added.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # read here, so that a bad block stops the run before any data is loaded
        self.focal_tversky_settings = FocalTverskySettings.from_configuration(self.configuration_manager.configuration)

    def _build_loss(self):
        stock = super()._build_loss()  # only its deep-supervision weights are used
        s = self.focal_tversky_settings
        loss = FocalTverskyLoss(s.alpha, s.beta, s.gamma, regions=self.label_manager.has_regions,
                                ignore_label=self.label_manager.ignore_label,
                                batch_dice=self.configuration_manager.batch_dice, ddp=self.is_ddp)
        self.print_to_log_file(
            f"{type(self).__name__}: focal Tversky loss alpha={s.alpha} (false negatives), beta={s.beta} "
            f"(false positives), gamma={s.gamma}, {'sigmoid regions' if loss.regions else 'softmax'}, "
            f"batch_dice={loss.batch_dice}, no cross-entropy")
        if self.enable_deep_supervision:
            loss = DeepSupervisionWrapper(loss, stock.weight_factors)
        return loss


class nnUNetTrainerFocalTversky(FocalTverskyMixin, nnUNetTrainer):
    """nnU-Net's trainer with the focal Tversky loss."""


# ---------------------------------------------------------------- fine-tuning strategies
class nnUNetTrainerFrozenEncoderFocalTversky(FocalTverskyMixin, nnUNetTrainerFrozenEncoder):
    """Encoder frozen for the whole run, focal Tversky loss."""


class nnUNetTrainerUnfreezeAtNFocalTversky(FocalTverskyMixin, nnUNetTrainerUnfreezeAtN):
    """Encoder frozen for the first ``finetune.unfreeze_epoch`` epochs, focal Tversky loss."""


class nnUNetTrainerGradualUnfreezeFocalTversky(FocalTverskyMixin, nnUNetTrainerGradualUnfreeze):
    """Encoder unfrozen stage by stage from the deepest, focal Tversky loss."""


class nnUNetTrainerWarmupFocalTversky(FocalTverskyMixin, nnUNetTrainerWarmup):
    """Linear learning-rate warm-up, focal Tversky loss."""


class nnUNetTrainerEncoderLRFocalTversky(FocalTverskyMixin, nnUNetTrainerEncoderLR):
    """Encoder at a fraction of the decoder's learning rate, focal Tversky loss."""


__all__ = ["FocalTverskyMixin"] + [name for name in dir() if name.startswith("nnUNetTrainer")
                                   and name.endswith("FocalTversky")]
