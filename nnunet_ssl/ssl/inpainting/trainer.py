"""``nnUNetTrainerInpainting``: restore cubes of the patch hidden behind a constant or noise.

A restoration method on :class:`~nnunet_ssl.ssl.base.nnUNetTrainerRestoration`
(which documents the contract with nnU-Net):

* Corruption: :func:`~nnunet_ssl.ssl.inpainting.masks.inpainting_corrupt`, exactly
  ``ratio`` of the patch in cubes, filled with the patch maximum ("white") or noise.
* Loss: the mean squared error on the hidden cubes only.
* Score: ``1 - loss / loss of predicting 0`` on the hidden cubes, logged as nnU-Net's pseudo Dice.

Settings come from the ``ssl_inpainting`` block (:mod:`nnunet_ssl.ssl.inpainting.settings`).
"""
from __future__ import annotations

import torch

from nnunet_ssl.ssl.base import nnUNetTrainerRestoration
from nnunet_ssl.ssl.inpainting.masks import inpainting_corrupt
from nnunet_ssl.ssl.inpainting.settings import InpaintingSettings


class nnUNetTrainerInpainting(nnUNetTrainerRestoration):
    """In-painting restoration; see the module docstring."""

    settings_class = InpaintingSettings

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.cube = self.ssl_settings.cube_for(self.configuration_manager.patch_size)

    def initialize(self):
        super().initialize()
        s = self.ssl_settings
        self.print_to_log_file(f"In-painting: {s.ratio} of each patch in cubes {list(self.cube)}, fill {s.fill}")

    def corrupt(self, data, generator):
        s = self.ssl_settings
        return inpainting_corrupt(data, self.cube, s.ratio, s.fill, generator)
