"""``nnUNetTrainerMAE``: masked-image-modelling pretraining of the whole U-Net the plans name.

Contract with nnU-Net (what this trainer changes and what it keeps):

* Kept: plans, preprocessed data, splits, patch and batch size, data augmentation,
  SGD with the poly learning-rate schedule, autocast and gradient scaling on CUDA,
  ``torch.compile``, DDP, ``--c`` resume, logging and the checkpoint layout.
* Network: the stock U-Net of the plans with as many output channels as input
  channels and no deep supervision, so that its checkpoint is a complete nnU-Net
  network state: ``nnUNetv2_train ... -pretrained_weights checkpoint_final.pth``
  loads every key but the output layer (``decoder.seg_layers``), which nnU-Net skips.
* Train and validation steps: whole blocks of the augmented patch ``data`` are set to
  0 (the mean after nnU-Net's normalisation); the network predicts the patch and the
  loss is the mean squared error on the masked voxels
  (:func:`~nnunet_ssl.ssl.mae.masking.masked_reconstruction_loss`). The
  segmentation ``target`` is not used.
* What "best" means: nnU-Net's logger and its ``checkpoint_best.pth`` follow
  ``mean_fg_dice`` and its moving average; this trainer logs there the
  *reconstruction score* ``1 - loss / loss of predicting 0`` on the validation
  batches (0: no better than the mask's fill value, 1: perfect), so ``progress.png``'s
  "pseudo dice" curve is that score and the best checkpoint is the best
  reconstruction.
* ``perform_actual_validation`` does nothing: there is nothing to segment.

Settings come from the ``ssl_mae`` block of the plans configuration
(:mod:`nnunet_ssl.ssl.mae.settings`).
"""
from __future__ import annotations

import json
import os
from typing import List

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_ssl.ssl.mae.masking import block_mask, masked_reconstruction_loss
from nnunet_ssl.ssl.mae.settings import MAESettings

VALIDATION_MASK_SEED = 12345  # the same masks every validation epoch: the scores compare across epochs


class nnUNetTrainerMAE(nnUNetTrainer):
    """Masked reconstruction pretraining; see the module docstring for the contract."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mae_settings = MAESettings.from_configuration(self.configuration_manager.configuration)
        s = self.mae_settings
        self.mask_block = s.block_for(self.configuration_manager.patch_size,
                                      self.configuration_manager.network_arch_init_kwargs["strides"])
        self.num_epochs = s.num_epochs
        self.num_iterations_per_epoch = s.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = s.num_val_iterations_per_epoch
        self.enable_deep_supervision = False
        # masks drawn on the CPU from the process's seed (one stream per DDP rank)
        self._mask_generator = torch.Generator().manual_seed(torch.initial_seed() + self.local_rank)
        self._val_generator = torch.Generator()

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        # the network reconstructs its input: as many outputs as inputs, one full-resolution output
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_input_channels, False)

    def initialize(self):
        super().initialize()
        self.print_to_log_file("MAE settings:\n" + json.dumps(self.mae_settings.to_dict(), indent=1),
                               also_print_to_console=False)
        self.print_to_log_file(f"MAE: mask ratio {self.mae_settings.mask_ratio}, blocks {list(self.mask_block)} "
                               f"of patches {list(self.configuration_manager.patch_size)}, "
                               f"norm_pix_loss {self.mae_settings.norm_pix_loss}")
        self.logger.update_config({"ssl_mae": self.mae_settings.to_dict()})

    def _build_loss(self):
        s, block = self.mae_settings, self.mask_block
        return lambda prediction, target, mask: masked_reconstruction_loss(
            prediction, target, mask, s.norm_pix_loss, block)

    def _masked_forward(self, batch: dict, generator: torch.Generator):
        """Mask ``batch["data"]``, predict it; return (loss, loss of predicting 0)."""
        data = batch["data"].to(self.device, non_blocking=True)
        mask = block_mask(data.shape, self.mask_block, self.mae_settings.mask_ratio, generator, self.device)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            prediction = self.network(data.masked_fill(mask, 0))
            loss = self.loss(prediction, data, mask)
        with torch.no_grad():
            baseline = self.loss(torch.zeros_like(prediction), data, mask)
        return loss, baseline

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self._masked_forward(batch, self._mask_generator)
        # as nnU-Net's train_step: scaled backward on CUDA, gradient clipping at 12
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._val_generator.manual_seed(VALIDATION_MASK_SEED + self.local_rank)

    def validation_step(self, batch: dict) -> dict:
        with torch.no_grad():
            loss, baseline = self._masked_forward(batch, self._val_generator)
        return {"loss": loss.detach().cpu().numpy(), "baseline": baseline.detach().cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        outputs = collate_outputs(val_outputs)
        loss, baseline = np.asarray(outputs["loss"], float), np.asarray(outputs["baseline"], float)
        if self.is_ddp:
            import torch.distributed as dist

            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (loss, baseline))
            loss = np.concatenate([np.atleast_1d(g[0]) for g in gathered])
            baseline = np.concatenate([np.atleast_1d(g[1]) for g in gathered])
        score = reconstruction_score(loss, baseline)
        self.logger.log("mean_fg_dice", score, self.current_epoch)
        self.logger.log("dice_per_class_or_region", [score], self.current_epoch)
        self.logger.log("val_losses", float(np.mean(loss)), self.current_epoch)

    def save_checkpoint(self, filename: str) -> None:
        # nnU-Net's checkpoint, written beside and renamed: a kill during the write leaves the old file whole
        temporary = f"{filename}.tmp"
        super().save_checkpoint(temporary)
        if os.path.isfile(temporary):
            os.replace(temporary, filename)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("MAE pretraining: no segmentation validation to run.")


def reconstruction_score(loss, baseline) -> float:
    """``1 - sum(loss) / sum(baseline)``: the share of the error of predicting 0 that the network removes.

    Example:
        >>> reconstruction_score([0.25, 0.25], [1.0, 1.0])
        0.75
    """
    total = float(np.sum(baseline))
    return float(1.0 - np.sum(loss) / total) if total > 0 else float("nan")
