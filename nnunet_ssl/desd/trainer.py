"""``nnUNetTrainerDeSD``: DeSD self-supervised pretraining of the encoder nnU-Net plans.

Contract with nnU-Net (what this trainer changes and what it keeps):

* Kept: plans and preprocessed data, splits and folds, data-augmentation
  pipeline (``get_training_transforms``), device selection, DDP batch splitting,
  logging to ``training_log_*.txt``, output folder layout, ``--c`` resume,
  ``-num_gpus``, mixed precision (float16 autocast with ``self.grad_scaler`` on CUDA
  only) and ``torch.compile`` where ``_do_i_compile`` says so (applied to the two
  encoders, not to the heads).
* Network: the U-Net the plans name is built with the stock
  ``build_network_architecture``; only its ``encoder`` is kept and wrapped in a
  :class:`~nnunet_ssl.desd.model.DeSDNetwork` (student with one head per stage,
  EMA teacher).
* Patch and batch: the SSL ``view_size`` and ``batch_size`` settings replace the
  configuration's ``patch_size`` and ``batch_size`` (on a copy; the plans are not
  modified), so nnU-Net's augmentation and DDP logic work on views.
* Loss, train and validation steps: the DeSD objective
  (:func:`~nnunet_ssl.desd.loss.desd_loss`); validation reports the same loss on
  the validation cases' views.
* Optimiser and schedules: AdamW with per-iteration learning-rate, weight-decay
  and momentum schedules (DINO's), teacher-temperature warm-up per epoch.
* Views: two per sample, drawn by :class:`~nnunet_ssl.desd.views.ViewPairLoader`
  (slab sampling, optional symmetry augmentation) and augmented separately. On a ``2d``
  configuration a sample is a slice (both views are crops of it) and a ``view_size`` the
  ``ssl`` block does not give is the in-plane part of the default.
* "Best" checkpoints: ``checkpoint_best.pth`` has the lowest validation SSL loss
  (not pseudo Dice); ``checkpoint_best_rankme.pth`` the highest RankMe after the
  monitoring warm-up; ``checkpoint_best_probe.pth`` the highest linear-probe score when
  ``ssl.probe_data`` names labelled cases.
* Logging: train/validation SSL loss, teacher entropy, teacher-student KL, RankMe,
  learning rate, weight decay, teacher momentum and temperature per epoch, plotted
  in ``progress.png``; a collapse guard warns (or stops the run).
* ``perform_actual_validation`` does nothing: there is nothing to segment.

It is a subclass of :class:`nnunet_ssl.ssl.base.nnUNetTrainerSSL`, the base of every
method: settings and run length, process placement, the checkpoint and its ``ssl``
entry, no final validation. The settings come from the ``ssl`` block of the plans
configuration (:mod:`nnunet_ssl.desd.settings`).
"""
from __future__ import annotations

import copy
import json
import os
from os.path import join
from typing import List, Union

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_ssl.checkpoint import ENCODER_PREFIXES, FORMAT, strip_wrapper_prefixes
from nnunet_ssl.desd.loss import desd_loss
from nnunet_ssl.desd.model import DeSDNetwork
from nnunet_ssl.desd.monitor import CollapseError, collapse_advice, collapse_reason, teacher_rankme
from nnunet_ssl.desd.progress import SSLLocalLogger
from nnunet_ssl.desd.schedules import cosine_schedule, teacher_temperature_schedule
from nnunet_ssl.desd.settings import DeSDSettings
from nnunet_ssl.desd.step import StepSchedule, forward_views, make_optimizer, train_step
from nnunet_ssl.desd.views import ViewPairLoader
from nnunet_ssl.distributed import ddp_device_ids, sync_batchnorm
from nnunet_ssl.ssl.base import nnUNetTrainerSSL


class nnUNetTrainerDeSD(nnUNetTrainerSSL):
    """DeSD pretraining of the plans' encoder; see the module docstring for the contract."""

    settings_class = DeSDSettings
    CHECKPOINT_FORMAT = FORMAT
    ENCODER_PREFIXES = ENCODER_PREFIXES  # the teacher's and the student's encoder
    ADAPTATION_PREFIX = "teacher."  # the adaptation plan points at the EMA teacher's encoder

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        s = self.ssl_settings
        patch_size = self.configuration_manager.patch_size
        if len(s.view_size) != len(patch_size):
            raise ValueError(f"view_size {list(s.view_size)} has {len(s.view_size)} axes but configuration "
                             f"'{configuration}' is {len(patch_size)}D; set ssl.view_size accordingly")
        # views play the role of patches: nnU-Net's augmentation and DDP batch logic then apply as they are
        cfg = copy.deepcopy(self.configuration_manager.configuration)
        cfg["patch_size"] = list(s.view_size)
        cfg["batch_size"] = s.batch_size
        self.configuration_manager = ConfigurationManager(cfg)
        self.save_every = 1  # SSL epochs are long; keep checkpoint_latest.pth current
        self.logger.local_logger = SSLLocalLogger()
        self._best_val_loss = None
        self._best_rankme = None
        self._best_probe = None
        self._probe = None
        self._collapsed_epochs = 0
        self._rankme_views: list = []
        self._step_in_epoch = 0
        self._epoch_stats: dict = {}

    def read_settings(self) -> DeSDSettings:
        settings = super().read_settings()
        configuration = self.configuration_manager.configuration
        if len(configuration["patch_size"]) == 2 and "view_size" not in (configuration.get("ssl") or {}):
            settings = settings.replace(view_size=tuple(settings.view_size[-2:]))  # a 2D view of the default
        return self.configure_ssl_settings(settings)

    def configure_ssl_settings(self, settings: DeSDSettings) -> DeSDSettings:
        """Hook for preset subclasses: return the settings to use (default: the plans' ones)."""
        return settings

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        if self.was_initialized:
            raise RuntimeError("initialize was called twice")
        s = self.ssl_settings
        self._set_batch_size_and_oversample()
        self.num_input_channels = determine_num_input_channels(
            self.plans_manager, self.configuration_manager, self.dataset_json)
        if s.symmetry_channel is not None:  # the contralateral channel feeds views, not the encoder
            if not 0 <= s.symmetry_channel < self.num_input_channels or self.num_input_channels < 2:
                raise ValueError(f"symmetry_channel {s.symmetry_channel} is not a channel of this "
                                 f"{self.num_input_channels}-channel dataset")
            self.num_input_channels -= 1
        unet = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, False)
        encoder = getattr(unet, "encoder", None)
        if encoder is None or not hasattr(encoder, "output_channels"):
            raise RuntimeError(f"{type(unet).__name__} has no `encoder` with per-stage `output_channels`; "
                               "DeSD needs a dynamic-network-architectures U-Net")
        network = DeSDNetwork.from_settings(encoder, s)
        if self.is_ddp:
            network = sync_batchnorm(network, self.device)
        self.network = network.to(self.device)
        if self._do_i_compile():  # nnU-Net's rule (CUDA, nnUNet_compile); the encoders, not the heads
            self.print_to_log_file("Using torch.compile for the student and teacher encoders...")
            self.network.compile_encoders()
        self.student = DDP(self.network.student, device_ids=ddp_device_ids(self.device)) if self.is_ddp \
            else self.network.student
        self.optimizer = make_optimizer(self.network.student)
        self.lr_scheduler = None
        self._build_schedules()
        self.loss = None
        self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        self.was_initialized = True
        self.print_to_log_file("SSL settings (DeSD):\n" + json.dumps(s.to_dict(), indent=1),
                               also_print_to_console=False)
        self.print_to_log_file(f"DeSD: {len(encoder.output_channels)} encoder stages, heads on channels "
                               f"{list(encoder.output_channels)}, K = {s.out_dim}, total batch "
                               f"{self.configuration_manager.batch_size}, view size {list(s.view_size)}")
        self.logger.update_config({"ssl": s.to_dict()})
        if s.probe_data is not None:
            from nnunet_ssl.probe import ProbeMonitor

            folder = s.probe_data if os.path.isabs(s.probe_data) else \
                join(os.environ.get("nnUNet_preprocessed", ""), s.probe_data)
            self._probe = ProbeMonitor(folder)
            self.print_to_log_file(f"Linear probe each epoch on {folder}: {len(self._probe.train_cases)} fitting and "
                                   f"{len(self._probe.test_cases)} held-out cases")

    def _build_schedules(self) -> None:
        s = self.ssl_settings
        n, it = self.num_epochs, self.num_iterations_per_epoch
        base_lr = s.lr * self.configuration_manager.batch_size / 256.0
        self.lr_schedule = cosine_schedule(base_lr, s.min_lr, n, it, s.warmup_epochs)
        self.wd_schedule = cosine_schedule(s.weight_decay, s.weight_decay_end, n, it)
        self.momentum_schedule = cosine_schedule(s.momentum_teacher, 1.0, n, it)
        self.teacher_temp_schedule = teacher_temperature_schedule(
            s.warmup_teacher_temp, s.teacher_temp, s.warmup_teacher_temp_epochs, n)

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # no decoder

    def plot_network_architecture(self):
        pass

    def get_dataloaders(self):
        s = self.ssl_settings
        rotation, dummy_2d, crop_size, mirror_axes = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            s.view_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=False, foreground_labels=self.label_manager.foreground_labels,
            regions=None, ignore_label=self.label_manager.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        # validation views are drawn and augmented like training views: the validation loss is
        # the SSL objective on cases the student never trains on
        loaders = [ViewPairLoader(d, self.batch_size, crop_size, s, transforms) for d in (dataset_tr, dataset_val)]
        n_proc = get_allowed_n_proc_DA()
        if n_proc == 0:
            gens = [SingleThreadedAugmenter(dl, None) for dl in loaders]
        else:
            gens = [NonDetMultiThreadedAugmenter(data_loader=dl, transform=None, num_processes=max(1, n_proc // k),
                                                 num_cached=max(3, n_proc // k), seeds=None,
                                                 pin_memory=self.device.type == "cuda", wait_time=0.002)
                    for dl, k in zip(loaders, (1, 2))]
        for g in gens:
            next(g)
        return gens[0], gens[1]

    def on_train_start(self):
        super().on_train_start()
        # a fixed set of validation views, so that RankMe is comparable across epochs
        self._rankme_views = [next(self.dataloader_val)["data"] for _ in range(self.ssl_settings.rankme_batches)]

    # --------------------------------------------------------------- training
    def _iteration(self) -> int:
        return min(self.current_epoch * self.num_iterations_per_epoch + self._step_in_epoch,
                   len(self.lr_schedule) - 1)

    def on_train_epoch_start(self):
        self.network.train()
        self._step_in_epoch = 0
        it = self._iteration()
        self._epoch_stats = {"lr": float(self.lr_schedule[it]), "wd": float(self.wd_schedule[it]),
                             "momentum": float(self.momentum_schedule[it]),
                             "teacher_temp": float(self.teacher_temp_schedule[self.current_epoch])}
        self.print_to_log_file("")
        self.print_to_log_file(f"Epoch {self.current_epoch}")
        self.print_to_log_file(f"Current learning rate: {np.round(self._epoch_stats['lr'], decimals=7)}, "
                               f"teacher momentum {self._epoch_stats['momentum']:.6f}, "
                               f"teacher temperature {self._epoch_stats['teacher_temp']:.4f}")

    def _autocast_dtype(self):
        """As nnU-Net: float16 autocast (with its GradScaler) on CUDA only, full precision elsewhere."""
        return torch.float16 if self.device.type == "cuda" else None

    def _views(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return (batch["data"].to(self.device, non_blocking=True),
                batch["data2"].to(self.device, non_blocking=True))

    def train_step(self, batch: dict) -> dict:
        it = self._iteration()
        schedule = StepSchedule(
            lr=float(self.lr_schedule[it]), weight_decay=float(self.wd_schedule[it]),
            momentum=float(self.momentum_schedule[it]),
            teacher_temp=float(self.teacher_temp_schedule[self.current_epoch]),
            freeze_last_layer=self.current_epoch < self.ssl_settings.freeze_last_layer_epochs)
        out = train_step(self.network, self.student, self.optimizer, *self._views(batch), self.ssl_settings,
                         schedule, self._autocast_dtype(), self.grad_scaler)
        self._step_in_epoch += 1
        return {"loss": out["loss"].cpu().numpy(), "teacher_entropy": np.float64(out["teacher_entropy"]),
                "kl_teacher_student": np.float64(out["kl_teacher_student"])}

    def _mean_over_processes(self, values) -> float:
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, np.asarray(values))
            return float(np.mean(np.concatenate([np.atleast_1d(g) for g in gathered])))
        return float(np.mean(values))

    def on_train_epoch_end(self, train_outputs: List[dict]):
        outputs = collate_outputs(train_outputs)
        e = self.current_epoch
        self.logger.log("train_losses", self._mean_over_processes(outputs["loss"]), e)
        self.logger.log("teacher_entropy", self._mean_over_processes(outputs["teacher_entropy"]), e)
        self.logger.log("kl_teacher_student", self._mean_over_processes(outputs["kl_teacher_student"]), e)
        self.logger.log("lrs", self._epoch_stats["lr"], e)
        self.logger.log("weight_decays", self._epoch_stats["wd"], e)
        self.logger.log("momentums", self._epoch_stats["momentum"], e)
        self.logger.log("teacher_temps", self._epoch_stats["teacher_temp"], e)

    def validation_step(self, batch: dict) -> dict:
        s = self.ssl_settings
        student_logits, teacher_logits = forward_views(self.network, self.network.student, *self._views(batch),
                                                       self._autocast_dtype())
        loss = desd_loss(student_logits, teacher_logits, self.network.center, s.student_temp,
                         float(self.teacher_temp_schedule[self.current_epoch]), s.head_weights)
        return {"loss": loss.detach().cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        outputs = collate_outputs(val_outputs)
        self.logger.log("val_losses", self._mean_over_processes(outputs["loss"]), self.current_epoch)
        ranks = teacher_rankme(self.network.teacher, self._rankme_views, self.device)
        for key, value in ranks.items():
            self.logger.log(key, value, self.current_epoch)
        probe = self._probe.score(self.network.teacher.encoder, self.device) if self._probe else float("nan")
        self.logger.log("probe_auc", probe, self.current_epoch)

    def on_epoch_end(self):
        from time import time

        e = self.current_epoch
        self.logger.log("epoch_end_timestamps", time(), e)
        get = self.logger.get_value
        self.print_to_log_file("train_loss", np.round(get("train_losses", step=-1), decimals=4))
        self.print_to_log_file("val_loss", np.round(get("val_losses", step=-1), decimals=4))
        self.print_to_log_file("teacher_entropy", np.round(get("teacher_entropy", step=-1), decimals=4),
                               "KL(teacher||student)", np.round(get("kl_teacher_student", step=-1), decimals=4))
        self.print_to_log_file("RankMe embedding", np.round(get("rankme_embedding", step=-1), decimals=2),
                               "features", np.round(get("rankme_features", step=-1), decimals=2))
        self.print_to_log_file(f"Epoch time: {np.round(get('epoch_end_timestamps', step=-1) - get('epoch_start_timestamps', step=-1), decimals=2)} s")
        val_loss = get("val_losses", step=-1)
        is_best = self._best_val_loss is None or val_loss < self._best_val_loss
        if is_best:  # before writing checkpoint_latest, so that a resumed run knows the best so far
            self._best_val_loss = val_loss
        probe = get("probe_auc", step=-1)
        is_best_probe = bool(np.isfinite(probe)) and (self._best_probe is None or probe > self._best_probe)
        if np.isfinite(probe):
            self.print_to_log_file("linear probe AUC", np.round(probe, decimals=4))
        if is_best_probe:
            self._best_probe = probe
        self._monitor(e)  # likewise: checkpoint_latest holds this epoch's collapse count
        if (e + 1) % self.save_every == 0 and e != (self.num_epochs - 1):
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        if is_best:
            self.print_to_log_file(f"New best validation SSL loss: {np.round(val_loss, decimals=4)}")
            self.save_checkpoint(join(self.output_folder, "checkpoint_best.pth"))
        if is_best_probe:
            self.print_to_log_file(f"New best linear probe AUC: {np.round(probe, decimals=4)}")
            self.save_checkpoint(join(self.output_folder, "checkpoint_best_probe.pth"))
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
        self.current_epoch += 1

    def _monitor(self, epoch: int) -> None:
        """Best-RankMe checkpoint and the collapse guard, both after the monitoring warm-up."""
        s = self.ssl_settings
        if epoch < s.monitor_warmup_epochs:
            return
        rank = self.logger.get_value("rankme_embedding", step=-1)
        if self._best_rankme is None or rank > self._best_rankme:
            self._best_rankme = rank
            self.print_to_log_file(f"New best RankMe: {np.round(rank, decimals=2)}")
            self.save_checkpoint(join(self.output_folder, "checkpoint_best_rankme.pth"))
        reason = collapse_reason(self.logger.get_value("teacher_entropy", step=-1), s.out_dim, rank)
        self._collapsed_epochs = self._collapsed_epochs + 1 if reason else 0
        if self._collapsed_epochs >= s.collapse_patience:
            message = (f"WARNING: representation collapse for {self._collapsed_epochs} epochs: {reason}. "
                       f"What to change: {collapse_advice(s, reason)}.")
            self.print_to_log_file(message)
            if s.stop_on_collapse:
                self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
                raise CollapseError(message + " Stopping (stop_on_collapse is set).")

    # ------------------------------------------------------------ checkpoints
    def checkpoint_extras(self) -> dict:
        return {"_best_ema": self._best_val_loss, "_best_rankme": self._best_rankme, "_best_probe": self._best_probe,
                "_collapsed_epochs": self._collapsed_epochs}

    def pretrain_patch_size(self):
        return self.ssl_settings.view_size

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        if "ssl" not in checkpoint:
            raise RuntimeError(f"{filename_or_checkpoint} is not a DeSD checkpoint (no 'ssl' entry); "
                               "continue it with the trainer that wrote it")
        saved = checkpoint["ssl"]["settings"]
        if saved != self.ssl_settings.to_dict():
            changed = sorted(k for k in saved if saved.get(k) != self.ssl_settings.to_dict().get(k))
            self.print_to_log_file(f"WARNING: SSL settings differ from the checkpoint's in {changed}; "
                                   "continuing with the current plans' settings")
        weights = {strip_wrapper_prefixes(k): v for k, v in checkpoint["network_weights"].items()}
        self.network.load_state_dict(weights)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        self.logger.load_checkpoint(checkpoint["logging"])
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self._best_val_loss = checkpoint["_best_ema"]
        self._best_rankme = checkpoint.get("_best_rankme")
        self._best_probe = checkpoint.get("_best_probe")
        self._collapsed_epochs = checkpoint.get("_collapsed_epochs", 0)  # the collapse guard resumes its count
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes")
