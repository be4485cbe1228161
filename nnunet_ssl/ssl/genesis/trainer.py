"""``nnUNetTrainerModelsGenesis``: Models Genesis pretraining of the whole U-Net the plans name.

A restoration method on :class:`~nnunet_ssl.ssl.base.nnUNetTrainerRestoration`
(which documents the contract with nnU-Net):

* Corruption: :func:`~nnunet_ssl.ssl.genesis.transforms.genesis_corrupt` (local
  shuffling, Bezier intensity curve, in- or out-painting, each with its probability,
  in the patch's own min-max frame).
* Loss: the mean squared error on the whole patch, as in the paper.
* Score: ``1 - loss / loss of predicting 0``, logged as nnU-Net's pseudo Dice.

Settings come from the ``ssl_genesis`` block (:mod:`nnunet_ssl.ssl.genesis.settings`).
"""
from __future__ import annotations

import torch

from nnunet_ssl.ssl.base import nnUNetTrainerRestoration
from nnunet_ssl.ssl.genesis.settings import GenesisSettings
from nnunet_ssl.ssl.genesis.transforms import genesis_corrupt


class nnUNetTrainerModelsGenesis(nnUNetTrainerRestoration):
    """Models Genesis restoration; see the module docstring."""

    settings_class = GenesisSettings

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.shuffle_block = self.ssl_settings.shuffle_block_for(self.configuration_manager.patch_size)

    def initialize(self):
        super().initialize()
        s = self.ssl_settings
        self.print_to_log_file(f"Models Genesis: non-linear {s.nonlinear_rate}, local shuffle {s.local_rate} "
                               f"(blocks {list(self.shuffle_block)}, {s.shuffle_ratio} of them), painting "
                               f"{s.paint_rate} (in-painting {s.inpaint_rate}, out-painting {s.outpaint_rate})")

    def corrupt(self, data, generator):
        corrupted = genesis_corrupt(data, self.ssl_settings, generator, self.shuffle_block)
        whole = torch.ones((data.shape[0], 1, *data.shape[2:]), dtype=torch.bool, device=data.device)
        return corrupted, whole
