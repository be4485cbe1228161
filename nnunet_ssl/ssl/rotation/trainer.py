"""``nnUNetTrainerRotation``: pretrain the encoder by classifying in-plane quarter-turn rotations.

A classification method on :class:`~nnunet_ssl.ssl.base.nnUNetTrainerPretext`
(which documents the contract with nnU-Net):

* Network: the plans' U-Net in a :class:`~nnunet_ssl.ssl.rotation.rotation.RotationNetwork`,
  a linear head on the average-pooled bottleneck. The decoder is never trained,
  but kept, so the checkpoint holds every U-Net key: stock ``-pretrained_weights``
  loads it (the ``head.*`` keys are ignored, the untrained decoder comes along) and
  ``nnunet-ssl-transfer`` takes the encoder alone.
* Batch: every sample is rotated by 0, 90, 180 or 270 degrees (drawn uniformly) in
  the ``plane`` setting's two axes. Where their patch edges differ, both are cropped
  (centred) to the shorter one, so every rotation keeps the shape.
* Augmentation: nnU-Net's, except that mirroring along the plane's axes is switched
  off (a mirrored patch turned by 90 degrees looks like a patch turned by 270) and
  augmentation rotations are limited to 30 degrees (nnU-Net turns anisotropic
  patches by up to 180 degrees in-plane), so the label stays what the patch shows.
* Loss: cross-entropy over the four labels. Score: the validation accuracy
  (0.25 is chance), logged as nnU-Net's pseudo Dice.

Settings come from the ``ssl_rotation`` block (:mod:`nnunet_ssl.ssl.rotation.settings`).
"""
from __future__ import annotations

import numpy as np
import torch
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ssl.ssl.base import accuracy, nnUNetTrainerPretext
from nnunet_ssl.ssl.rotation.rotation import ANGLES, RotationNetwork, rotate, square_crop
from nnunet_ssl.ssl.rotation.settings import RotationSettings

MAX_AUGMENTATION_ROTATION = np.deg2rad(30.0)


class nnUNetTrainerRotation(nnUNetTrainerPretext):
    """Rotation classification; see the module docstring."""

    settings_class = RotationSettings

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.plane = self.ssl_settings.plane_for(self.configuration_manager.patch_size)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_input_channels, False)
        return RotationNetwork(unet)

    def initialize(self):
        super().initialize()
        patch = list(self.configuration_manager.patch_size)
        edges = [patch[a] for a in self.plane]
        crop = "" if edges[0] == edges[1] else f", patches cropped to {min(edges)} x {min(edges)} in that plane"
        self.print_to_log_file(f"Rotation: quarter turns in the plane of axes {list(self.plane)} of patches "
                               f"{patch}{crop}")

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, _, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        limit = min(abs(rotation[0]), abs(rotation[1]), MAX_AUGMENTATION_ROTATION)
        rotation = (-limit, limit)
        # the initial patch for the smaller rotation, as nnU-Net computes it
        patch_size = self.configuration_manager.patch_size
        initial = get_patch_size(patch_size, rotation, rotation, rotation, (0.85, 1.25))
        if dummy_2d:
            initial[0] = patch_size[0]
        # mirroring along an in-plane axis turns a 90-degree rotation into a 270-degree one
        mirror_axes = tuple(a for a in (mirror_axes or ()) if a not in self.plane) or None
        self.inference_allowed_mirroring_axes = mirror_axes
        return rotation, dummy_2d, initial, mirror_axes

    def pretext_batch(self, data, generator):
        data = square_crop(data, self.plane)
        labels = torch.randint(0, len(ANGLES), (data.shape[0],), generator=generator)
        return rotate(data, labels, self.plane), {"labels": labels.to(data.device)}

    def _build_loss(self):
        return torch.nn.CrossEntropyLoss()

    def pretext_loss(self, output, targets):
        labels = targets["labels"]
        loss = self.loss(output.float(), labels)
        correct = (output.argmax(dim=1) == labels).sum()
        return loss, {"correct": correct, "count": torch.tensor(labels.numel())}

    def validation_score(self, outputs: dict) -> float:
        return accuracy(outputs)
