"""A short fine-tuning preset for the demo and CPU tests.

``nnUNetTrainer_Demo`` is nnU-Net's ``nnUNetTrainer`` with fewer and shorter
epochs (20 x 40 iterations, 5 validation iterations); everything else is stock.
It exists so that the demo's two fine-tuning runs fit on a CPU in minutes; real
fine-tuning uses the stock trainer or nnU-Net's epoch-count variants.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_Demo(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 20
        self.num_iterations_per_epoch = 40
        self.num_val_iterations_per_epoch = 5
