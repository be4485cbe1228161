"""The training budget and seed of a comparison, read from a ``budget`` block of the plans configuration.

::

    "3d_fullres_budget": {
        "inherits_from": "3d_fullres",
        "budget": {"num_epochs": 20, "num_iterations_per_epoch": 40,
                   "num_val_iterations_per_epoch": 5, "final_validation": false,
                   "fold_seeds": [0, 1000, ...]}
    }

* the run length (epochs, iterations per epoch, validation iterations), so that every
  arm of a comparison gets exactly the same budget, whatever the trainer's own length;
* the seed of ``torch``, ``numpy`` and ``random`` before the network is built:
  ``fold_seeds[fold]`` (the fold number where the list has no entry), so that two runs
  of one fold, e.g. from scratch and from pretrained weights, start from the same random
  state and draw the same first batches;
* ``final_validation: false`` skips nnU-Net's prediction of the validation cases after
  training (``perform_actual_validation``), for comparisons that score held-out test
  cases themselves; the default keeps it.

Names left out keep the trainer's values. ``nnUNetTrainerBudget`` applies the block
always; the fine-tuning strategies (:mod:`nnunet_ssl.finetune.trainers`) when the
configuration has one. ``nnunet-ssl experiment`` writes it.
"""
from __future__ import annotations

import random

import numpy as np
import torch

BUDGET_NAMES = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch")
OTHER_NAMES = ("fold_seeds", "final_validation")


class BudgetMixin:
    """For nnU-Net trainers: :meth:`apply_budget` in ``__init__``; the final validation as the block says."""

    final_validation: bool = True
    budget_seed = None

    def apply_budget(self, fold) -> None:
        budget = dict(self.configuration_manager.configuration.get("budget") or {})
        unknown = sorted(set(budget) - set(BUDGET_NAMES) - set(OTHER_NAMES))
        if unknown:
            raise ValueError(f"unknown budget setting(s) {unknown}; known: {list(BUDGET_NAMES + OTHER_NAMES)}")
        for name in BUDGET_NAMES:
            if name in budget:
                setattr(self, name, int(budget[name]))
        seeds = list(budget.get("fold_seeds") or [])
        fold_number = fold if isinstance(fold, int) else -1  # fold "all"
        self.budget_seed = int(seeds[fold_number]) if 0 <= fold_number < len(seeds) else max(fold_number, 0)
        self.final_validation = bool(budget.get("final_validation", True))
        random.seed(self.budget_seed)
        np.random.seed(self.budget_seed)
        torch.manual_seed(self.budget_seed)

    def log_budget(self) -> None:
        self.print_to_log_file(f"{type(self).__name__}: {self.num_epochs} epochs x {self.num_iterations_per_epoch} "
                               f"iterations ({self.num_val_iterations_per_epoch} validation), seed "
                               f"{self.budget_seed}")

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.final_validation:
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file(f"{type(self).__name__}: final validation skipped (budget final_validation: false)")
