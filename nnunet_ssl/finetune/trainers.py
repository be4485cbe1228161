"""Fine-tuning trainers for ``nnUNetv2_train -tr NAME -pretrained_weights FILE``.

Each class is a thin subclass that changes one thing of nnU-Net's training;
the logic lives in :mod:`~nnunet_ssl.finetune.freezing`,
:mod:`~nnunet_ssl.finetune.warmup` and :mod:`~nnunet_ssl.finetune.settings`.

* :class:`nnUNetTrainerFinetune`: stock nnU-Net, plus the ``finetune`` block of
  the plans (``num_epochs``) and the freezing hook. The base of the others.
* :class:`nnUNetTrainerFrozenEncoder`: the encoder never trains.
* :class:`nnUNetTrainerUnfreezeAtN`: encoder frozen for ``unfreeze_epoch`` epochs.
  Presets :class:`nnUNetTrainerUnfreezeAt33` and :class:`nnUNetTrainerUnfreezeAt66`
  are the seed paper's runs (100 epochs, frozen for the first 33 or 66).
* :class:`nnUNetTrainerGradualUnfreeze`: encoder stages unfrozen one at a time,
  from the deepest to the stem.
* :class:`nnUNetTrainerWarmup`: linear learning-rate warm-up of the whole network.
* :class:`nnUNetTrainerEncoderLR`: encoder learning rate = factor * decoder's.
* ``_100epochs`` / ``_300epochs`` presets of each, and :class:`nnUNetTrainer_300epochs`
  (nnU-Net ships ``nnUNetTrainer_100epochs`` but no 300-epoch variant).
* :class:`nnUNetTrainerUnfreezeAt_Demo`: 2 short epochs; for demos and tests only.

Pretrained weights are loaded by nnU-Net's ``-pretrained_weights`` after
``initialize()``; freezing is applied at the start of every epoch from the
epoch number alone, so ``--c`` (continue) restores the right state.
"""
from __future__ import annotations

from functools import partial
from typing import ClassVar, List, Optional

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ssl.finetune.budget import BudgetMixin
from nnunet_ssl.finetune.freezing import (
    NEVER, apply_frozen_stages, default_gradual_schedule, encoder_stages, frozen_at, gradual_unfreeze_epochs,
    rewrap_ddp, split_parameters)
from nnunet_ssl.finetune.settings import FinetuneSettings, apply_preset
from nnunet_ssl.finetune.warmup import EpochLRScheduler, default_warmup_epochs, poly_lr, warmup_poly_lr


class nnUNetTrainerFinetune(BudgetMixin, nnUNetTrainer):
    """nnU-Net's trainer with the ``finetune`` plans block and a per-epoch freezing hook.

    Alone it trains like ``nnUNetTrainer`` (all parameters, poly learning rate);
    subclasses override :meth:`unfreeze_epochs` or ``configure_optimizers``.
    ``PRESET`` holds settings a subclass fixes (they win over the plans block). A
    ``budget`` block in the configuration (:mod:`nnunet_ssl.finetune.budget`, as
    ``nnunet-ssl experiment`` writes it) sets the run length and seed over both.
    """

    PRESET: ClassVar[dict] = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        settings = FinetuneSettings.from_configuration(self.configuration_manager.configuration)
        self.finetune_settings, self._preset_overrides = apply_preset(settings, self.PRESET)
        if self.finetune_settings.num_epochs is not None:
            self.num_epochs = self.finetune_settings.num_epochs
        self._has_budget = "budget" in self.configuration_manager.configuration
        if self._has_budget:
            self.apply_budget(fold)
        self._frozen: Optional[List[bool]] = None

    # ------------------------------------------------------------ hooks
    def unfreeze_epochs(self, n_stages: int) -> List[float]:
        """Epoch at which each encoder stage (index 0 = stem) becomes trainable; here: all from the start."""
        return [0] * n_stages

    # ------------------------------------------------------------ nnU-Net overrides
    def initialize(self):
        super().initialize()
        self.print_to_log_file(f"{type(self).__name__}: fine-tuning settings\n{self.finetune_settings}",
                               also_print_to_console=False)
        if self._has_budget:
            self.log_budget()
        for name in self._preset_overrides:
            self.print_to_log_file(f"WARNING: {type(self).__name__} fixes {name}="
                                   f"{getattr(self.finetune_settings, name)}; the plans' finetune block value "
                                   "is ignored (use nnUNetTrainerUnfreezeAtN etc. to set it from the plans)")
        n = len(encoder_stages(self.network))
        schedule = self.unfreeze_epochs(n)
        if any(u > 0 for u in schedule):
            shown = ["never" if u == NEVER else int(u) for u in schedule]
            self.print_to_log_file(f"Encoder stages (stem first) become trainable at epochs {shown} of "
                                   f"{self.num_epochs}")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # network.train(), learning rate of this epoch
        self.apply_freezing(self.current_epoch)

    def apply_freezing(self, epoch: int) -> List[bool]:
        """Freeze the encoder stages the schedule says are frozen during ``epoch``; return the flags."""
        frozen = frozen_at(epoch, self.unfreeze_epochs(len(encoder_stages(self.network))))
        changed = apply_frozen_stages(self.network, frozen, self.optimizer)
        if frozen != self._frozen and (any(frozen) or self._frozen is not None):
            n_train = sum(p.numel() for p in self.network.parameters() if p.requires_grad)
            self.print_to_log_file(f"Epoch {epoch}: encoder stages frozen (stem first) {frozen}; "
                                   f"{n_train} trainable parameters")
        if changed and self.is_ddp:  # DDP decides at construction which parameters it reduces
            self.network = rewrap_ddp(self.network, [self.local_rank])
        self._frozen = frozen
        return frozen


# ---------------------------------------------------------------- freezing strategies
class nnUNetTrainerFrozenEncoder(nnUNetTrainerFinetune):
    """The encoder is frozen for the whole run; only the decoder and segmentation layers train."""

    def unfreeze_epochs(self, n_stages: int) -> List[float]:
        return [NEVER] * n_stages


class nnUNetTrainerUnfreezeAtN(nnUNetTrainerFinetune):
    """The encoder is frozen for the first ``finetune.unfreeze_epoch`` epochs (default 33), then trains."""

    def unfreeze_epochs(self, n_stages: int) -> List[float]:
        return [self.finetune_settings.unfreeze_epoch] * n_stages


class nnUNetTrainerUnfreezeAt33(nnUNetTrainerUnfreezeAtN):
    """The seed paper's run: 100 epochs, encoder frozen in epochs 0-32."""

    PRESET = {"num_epochs": 100, "unfreeze_epoch": 33}


class nnUNetTrainerUnfreezeAt66(nnUNetTrainerUnfreezeAtN):
    """The seed paper's run: 100 epochs, encoder frozen in epochs 0-65."""

    PRESET = {"num_epochs": 100, "unfreeze_epoch": 66}


class nnUNetTrainerGradualUnfreeze(nnUNetTrainerFinetune):
    """Encoder frozen, then unfrozen one stage at a time from the deepest to the stem.

    Stage ``n-1`` at ``gradual_start_epoch``, each shallower one ``gradual_interval``
    epochs later (defaults: :func:`~nnunet_ssl.finetune.freezing.default_gradual_schedule`).
    """

    def unfreeze_epochs(self, n_stages: int) -> List[float]:
        s = self.finetune_settings
        start, interval = default_gradual_schedule(self.num_epochs, n_stages)
        return gradual_unfreeze_epochs(n_stages,
                                       start if s.gradual_start_epoch is None else s.gradual_start_epoch,
                                       interval if s.gradual_interval is None else s.gradual_interval)


# ---------------------------------------------------------------- learning-rate strategies
class nnUNetTrainerWarmup(nnUNetTrainerFinetune):
    """Linear learning-rate warm-up of the whole network over ``finetune.warmup_epochs``, then poly.

    Unlike nnU-Net's ``nnUNetTrainer_warmup`` it keeps one optimiser for the
    whole run (no switch at the end of the warm-up) and reads its length from the plans.
    """

    def configure_optimizers(self):
        optimizer, _ = super().configure_optimizers()
        w = self.finetune_settings.warmup_epochs
        w = default_warmup_epochs(self.num_epochs) if w is None else w
        return optimizer, EpochLRScheduler(optimizer, partial(
            warmup_poly_lr, initial_lr=self.initial_lr, num_epochs=self.num_epochs, warmup_epochs=w))


class nnUNetTrainerEncoderLR(nnUNetTrainerFinetune):
    """The encoder learns at ``finetune.encoder_lr_factor`` (default 0.1) times the decoder's rate.

    Two SGD parameter groups (decoder and segmentation layers first, so nnU-Net
    logs the decoder's rate; then the encoder), same poly schedule, momentum and
    weight decay as nnU-Net's.
    """

    def configure_optimizers(self):
        encoder, rest = split_parameters(self.network)
        factor = self.finetune_settings.encoder_lr_factor
        optimizer = torch.optim.SGD(
            [{"params": rest, "lr_scale": 1.0, "lr": self.initial_lr},
             {"params": encoder, "lr_scale": factor, "lr": self.initial_lr * factor}],
            self.initial_lr, weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, EpochLRScheduler(optimizer, partial(poly_lr, initial_lr=self.initial_lr,
                                                              num_epochs=self.num_epochs))


# ---------------------------------------------------------------- run-length presets
class nnUNetTrainer_300epochs(nnUNetTrainer):
    """Stock nnU-Net for 300 epochs (the seed paper's longer runs)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 300


class nnUNetTrainerFrozenEncoder_100epochs(nnUNetTrainerFrozenEncoder):
    PRESET = {"num_epochs": 100}


class nnUNetTrainerFrozenEncoder_300epochs(nnUNetTrainerFrozenEncoder):
    PRESET = {"num_epochs": 300}


class nnUNetTrainerGradualUnfreeze_100epochs(nnUNetTrainerGradualUnfreeze):
    PRESET = {"num_epochs": 100}


class nnUNetTrainerGradualUnfreeze_300epochs(nnUNetTrainerGradualUnfreeze):
    PRESET = {"num_epochs": 300}


class nnUNetTrainerWarmup_100epochs(nnUNetTrainerWarmup):
    PRESET = {"num_epochs": 100}


class nnUNetTrainerWarmup_300epochs(nnUNetTrainerWarmup):
    PRESET = {"num_epochs": 300}


class nnUNetTrainerEncoderLR_100epochs(nnUNetTrainerEncoderLR):
    PRESET = {"num_epochs": 100}


class nnUNetTrainerEncoderLR_300epochs(nnUNetTrainerEncoderLR):
    PRESET = {"num_epochs": 300}


class nnUNetTrainerUnfreezeAt_Demo(nnUNetTrainerUnfreezeAtN):
    """Demo and test preset only: 2 epochs of 2 iterations (1 validation iteration), unfrozen at epoch 1.

    Shows a fine-tuning run end to end in seconds on a CPU; useless for real training.
    """

    PRESET = {"num_epochs": 2, "unfreeze_epoch": 1}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1


__all__ = [name for name in dir() if name.startswith("nnUNetTrainer") and name != "nnUNetTrainer"]
