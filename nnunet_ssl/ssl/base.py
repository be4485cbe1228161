"""The trainers every SSL method builds on: what they share with nnU-Net and with each other.

:class:`nnUNetTrainerSSL` is the base of every method, DeSD included
(:class:`~nnunet_ssl.desd.trainer.nnUNetTrainerDeSD`): the settings read from the
method's block of the plans configuration (``settings_class``) and the run length they
give, the process placement under torchrun and DDP, no deep supervision, the
checkpoint (nnU-Net's entries plus the ``ssl`` entry with the method's name, settings
block and settings, and the ``nnssl_adaptation_plan`` that tells ``nnunet-ssl-transfer``
where the encoder is), written atomically by rank 0, and no segmentation validation at
the end. A method adds its network, steps and its own checkpoint entries
(:meth:`~nnUNetTrainerSSL.checkpoint_extras`).

Contract with nnU-Net of the pretext methods (:class:`nnUNetTrainerPretext`; what it
changes and what it keeps):

* Kept: plans, preprocessed data, splits, patch and batch size, data augmentation,
  SGD with the poly learning-rate schedule, autocast and gradient scaling on CUDA,
  gradient clipping at 12, ``torch.compile``, DDP, ``--c`` resume, logging and the
  output folder layout.
* Network: the stock U-Net of the plans with as many output channels as input
  channels and no deep supervision (a method may wrap it, keeping its state-dict
  keys), so that the checkpoint holds a complete nnU-Net network state:
  ``nnUNetv2_train ... -pretrained_weights checkpoint_final.pth`` loads every key
  but the output layer (``decoder.seg_layers``), which nnU-Net skips, and
  ``nnunet-ssl-transfer`` finds the encoder through the ``nnssl_adaptation_plan``.
* Settings: one block of the plans configuration per method (``ssl_mae``,
  ``ssl_genesis``, ...; :mod:`nnunet_ssl.ssl.settings`), recorded in the log, the
  logger's config and the checkpoint's ``ssl`` entry.
* Train and validation steps: the method turns ``batch["data"]`` into the network's
  input and a target (:meth:`~nnUNetTrainerPretext.pretext_batch`, without gradients)
  and scores the network's output (:meth:`~nnUNetTrainerPretext.pretext_loss`). The
  segmentation ``target`` of the batch is not used. Validation draws its random
  corruptions from a generator reset every epoch, so scores compare across epochs.
* What "best" means: nnU-Net's logger and ``checkpoint_best.pth`` follow
  ``mean_fg_dice`` and its moving average; the method's validation score
  (:meth:`~nnUNetTrainerPretext.validation_score`, higher is better) is logged
  there, so ``progress.png``'s "pseudo dice" curve shows it.
* Checkpoints are written to a temporary file and renamed (a kill during the
  write leaves the previous file whole).
* ``perform_actual_validation`` does nothing: there is nothing to segment.

:class:`nnUNetTrainerRestoration` adds what the restoration methods share: a
method implements ``corrupt(data, generator) -> (corrupted, loss_mask)``; the
network predicts the original patch, the loss is the squared error on the loss
mask, and the validation score is ``1 - loss / loss of predicting 0``.
"""
from __future__ import annotations

import json
from typing import List

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_ssl.checkpoint import nnssl_adaptation_plan, save_trainer_checkpoint, ssl_metadata
from nnunet_ssl.distributed import ddp_device_ids, place_process, sync_batchnorm
from nnunet_ssl.finetune.freezing import unwrap
from nnunet_ssl.ssl.restoration import masked_mse, reconstruction_score
from nnunet_ssl.ssl.contrastive import PooledHeadNetwork, projection_head, two_views
from nnunet_ssl.ssl.settings import ContrastiveSettings, PretextSettings

PRETEXT_FORMAT = "nnunet_ssl.pretext/1"
VALIDATION_SEED = 12345  # the same corruptions every validation epoch: the scores compare across epochs


def accuracy(outputs: dict) -> float:
    """``sum(correct) / sum(count)`` over the validation batches (NaN without any)."""
    count = float(np.sum(outputs["count"]))
    return float(np.sum(outputs["correct"]) / count) if count else float("nan")


class nnUNetTrainerSSL(nnUNetTrainer):
    """Base of every SSL trainer (see the module docstring).

    A method sets ``settings_class`` (its settings, whose ``BLOCK`` names the plans block),
    ``CHECKPOINT_FORMAT``, ``ENCODER_PREFIXES`` (where the encoder's keys are in the saved
    ``network_weights``) and ``ADAPTATION_PREFIX`` (the same for the adaptation plan), and may
    replace :meth:`read_settings`, :meth:`checkpoint_extras` and :meth:`pretrain_patch_size`.
    """

    settings_class: type = PretextSettings
    CHECKPOINT_FORMAT = PRETEXT_FORMAT
    ENCODER_PREFIXES: dict = {"network": "encoder."}  # one plain U-Net
    ADAPTATION_PREFIX = ""
    # whether the method trains the U-Net's decoder (recorded in the checkpoint: nnunet-ssl-transfer --decoder)
    TRAINS_DECODER = False
    SUPPORTS_LAUNCHER = True  # runs as one process of torchrun (nnunet_ssl.distributed)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        place_process(self, device)
        self.ssl_settings = self.read_settings()
        s = self.ssl_settings
        self.num_epochs = s.num_epochs
        self.num_iterations_per_epoch = s.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = s.num_val_iterations_per_epoch
        self.enable_deep_supervision = False

    def read_settings(self):
        """The method's settings from its block of the plans configuration (names and types checked)."""
        return self.settings_class.from_configuration(self.configuration_manager.configuration)

    # ------------------------------------------------------------- checkpoints
    def checkpoint_extras(self) -> dict:
        """The method's own checkpoint entries (best scores, counters); nnU-Net's ``_best_ema`` by default."""
        return {"_best_ema": self._best_ema}

    def pretrain_patch_size(self):
        """The patch size the network was pretrained on (the adaptation plan's ``pretrain_plan``)."""
        return self.configuration_manager.patch_size

    def checkpoint_dict(self) -> dict:
        """nnU-Net's checkpoint entries, plus ``ssl`` and ``nnssl_adaptation_plan`` (what the weights are)."""
        meta = ssl_metadata(self.ssl_settings.to_dict(), self.configuration_manager, self.num_input_channels,
                            self.plans_manager.dataset_name, self.plans_manager.plans_name, self.configuration_name,
                            format=self.CHECKPOINT_FORMAT, encoder_prefixes=self.ENCODER_PREFIXES)
        meta.update({"method": self.__class__.__name__, "settings_block": self.settings_class.BLOCK,
                     "trains_decoder": self.TRAINS_DECODER})
        return {
            "network_weights": unwrap(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            **self.checkpoint_extras(),
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "ssl": meta,
            "nnssl_adaptation_plan": nnssl_adaptation_plan(self.plans_manager.plans, self.configuration_name,
                                                           self.num_input_channels, self.pretrain_patch_size(),
                                                           weights_prefix=self.ADAPTATION_PREFIX),
        }

    def save_checkpoint(self, filename: str) -> None:
        save_trainer_checkpoint(self, filename)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file(f"{self.__class__.__name__} pretraining: no segmentation validation to run.")


class nnUNetTrainerPretext(nnUNetTrainerSSL):
    """Shared part of the pretext trainers; see the module docstring for the contract.

    A method sets ``settings_class`` and implements :meth:`pretext_batch`,
    :meth:`pretext_loss` and :meth:`validation_score`.
    """

    settings_class: type[PretextSettings] = PretextSettings

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # corruptions drawn from the process's seed (one stream per DDP rank)
        self._train_generator = torch.Generator().manual_seed(torch.initial_seed() + self.local_rank)
        self._val_generator = torch.Generator()

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        # as many outputs as inputs, one full-resolution output
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_input_channels, False)

    def initialize(self):
        # nnU-Net's initialize puts DDP on GPU `global rank`, which exists on one node only and not on the
        # CPU; it runs here without its DDP step, which follows on this process's own device
        ddp, self.is_ddp = self.is_ddp, False
        try:
            super().initialize()
        finally:
            self.is_ddp = ddp
        if ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self._set_batch_size_and_oversample()  # this process's share of the global batch
            # static graph: a method leaves the same parameters unused in every step (deep-supervision
            # outputs, the decoder of the encoder-only methods), which plain DDP refuses
            self.network = DDP(sync_batchnorm(self.network, self.device), device_ids=ddp_device_ids(self.device),
                               static_graph=True)
        block = self.settings_class.BLOCK
        self.print_to_log_file(f"{block} settings:\n" + json.dumps(self.ssl_settings.to_dict(), indent=1),
                               also_print_to_console=False)
        self.logger.update_config({block: self.ssl_settings.to_dict()})

    # ------------------------------------------------------------- the method's hooks
    def pretext_batch(self, data: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """The network's input and the targets :meth:`pretext_loss` needs (run without gradients)."""
        raise NotImplementedError

    def pretext_loss(self, output: torch.Tensor, targets: dict) -> tuple[torch.Tensor, dict]:
        """``(loss, statistics)``; the statistics (tensors) go to :meth:`validation_score`."""
        raise NotImplementedError

    def validation_score(self, outputs: dict) -> float:
        """Higher is better; ``outputs`` maps ``loss`` and each statistic to an array over the batches."""
        raise NotImplementedError

    def after_train_step(self, targets: dict) -> None:
        """Called after every optimiser step with the step's targets (a momentum encoder's update, a queue)."""

    def autocast(self):
        """nnU-Net's mixed precision: autocast on CUDA, nothing elsewhere."""
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    # ------------------------------------------------------------- steps
    def _forward_loss(self, batch: dict, generator: torch.Generator):
        data = batch["data"].to(self.device, non_blocking=True)
        with torch.no_grad():
            inputs, targets = self.pretext_batch(data, generator)
        with self.autocast(), self.forward_context(targets):
            output = self.network(inputs)
            loss, stats = self.pretext_loss(output, targets)
        return loss, stats, targets

    def forward_context(self, targets: dict):
        """Context of the network's forward pass in a step (a method may return hooks, e.g. MAE's sparse encoder)."""
        return dummy_context()

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        loss, _, targets = self._forward_loss(batch, self._train_generator)
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
        self.after_train_step(targets)
        return {"loss": loss.detach().cpu().numpy()}

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._val_generator.manual_seed(VALIDATION_SEED + self.local_rank)

    def validation_step(self, batch: dict) -> dict:
        with torch.no_grad():
            loss, stats, _ = self._forward_loss(batch, self._val_generator)
        return {"loss": loss.detach().cpu().numpy(), **{k: v.detach().cpu().numpy() for k, v in stats.items()}}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        outputs = {k: np.asarray(v, float).ravel() for k, v in collate_outputs(val_outputs).items()}
        if self.is_ddp:
            import torch.distributed as dist

            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, outputs)
            outputs = {k: np.concatenate([g[k] for g in gathered]) for k in outputs}
        score = self.validation_score(outputs)
        self.logger.log("mean_fg_dice", score, self.current_epoch)
        self.logger.log("dice_per_class_or_region", [score], self.current_epoch)
        self.logger.log("val_losses", float(np.mean(outputs["loss"])), self.current_epoch)


class nnUNetTrainerRestoration(nnUNetTrainerPretext):
    """Restore a corrupted patch; a method implements :meth:`corrupt` (and may replace :meth:`restoration_loss`)."""

    TRAINS_DECODER = True  # the decoder restores the patch

    def corrupt(self, data: torch.Tensor, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(corrupted patch, loss mask)``: a new tensor (``data`` unchanged) and a boolean
        ``(B, 1, *spatial)`` (or ``(B, C, *spatial)``) mask of the voxels the loss counts."""
        raise NotImplementedError

    def restoration_loss(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mse(prediction, target, mask)

    def _build_loss(self):
        return self.restoration_loss

    def pretext_batch(self, data, generator):
        corrupted, mask = self.corrupt(data, generator)
        return corrupted, {"target": data, "mask": mask}

    def pretext_loss(self, output, targets):
        target, mask = targets["target"], targets["mask"]
        loss = self.loss(output, target, mask)
        with torch.no_grad():
            baseline = self.loss(torch.zeros_like(output), target, mask)
        return loss, {"baseline": baseline}

    def validation_score(self, outputs: dict) -> float:
        return reconstruction_score(outputs["loss"], outputs["baseline"])



class nnUNetTrainerContrastive(nnUNetTrainerPretext):
    """Two views of every patch, embedded by a projection head on the pooled bottleneck.

    The network is :class:`~nnunet_ssl.ssl.contrastive.PooledHeadNetwork` (a method may wrap
    it differently: :meth:`wrap_network`): the U-Net's keys (the decoder kept, never trained)
    plus ``head.*``, SimCLR's two-layer MLP of the ``hidden_dim`` and ``projection_dim``
    settings. A method's statistics ``correct`` and ``count`` give the validation score:
    the share of samples whose positive scores above every negative.
    """

    settings_class: type[ContrastiveSettings] = ContrastiveSettings

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_input_channels, False)
        settings = cls.settings_class.from_configuration(configuration_manager.configuration)
        head = projection_head(unet.encoder.output_channels[-1], settings.hidden_dim, settings.projection_dim)
        return cls.wrap_network(unet, head, settings)

    @classmethod
    def wrap_network(cls, unet, head, settings) -> torch.nn.Module:
        return PooledHeadNetwork(unet, head)

    def _build_loss(self):
        return None  # the methods' losses are functions of their outputs (nnunet_ssl.ssl.contrastive)

    def views(self, data: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return two_views(data, generator, **self.ssl_settings.view_settings())

    def validation_score(self, outputs: dict) -> float:
        return accuracy(outputs)
