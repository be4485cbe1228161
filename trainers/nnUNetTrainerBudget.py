"""Stock nnU-Net fine-tuning with the training budget and seed read from the plans.

``nnUNetTrainerBudget`` is nnU-Net's ``nnUNetTrainer`` with the ``budget`` block of the
plans configuration it trains applied (run length, seed before the network is built,
final validation; see :mod:`nnunet_ssl.finetune.budget`). Without a block it seeds with
the fold number. ``nnunet-ssl experiment`` (and the label-efficiency benchmark,
``bench/label_efficiency.py``, which runs it) writes this configuration.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ssl.finetune.budget import BudgetMixin


class nnUNetTrainerBudget(BudgetMixin, nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.apply_budget(fold)

    def initialize(self):
        super().initialize()
        self.log_budget()
