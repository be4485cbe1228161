"""``nnUNetTrainerSimCLR``: pretrain the encoder by telling two views of a patch from the other patches.

A contrastive method on :class:`~nnunet_ssl.ssl.base.nnUNetTrainerContrastive` (Chen et al. 2020;
the base documents the contract with nnU-Net, the views and the network):

* Batch: two views of every augmented patch (:func:`~nnunet_ssl.ssl.contrastive.two_views`),
  both through the same encoder and projection head in one forward pass.
* Loss: NT-Xent (:func:`~nnunet_ssl.ssl.contrastive.nt_xent`) over the ``2B`` embeddings of
  the global batch (under DDP every process's embeddings are gathered, with gradients).
* Score: how often an embedding ranks its partner first among the other ``2B - 1``
  (validation; logged as nnU-Net's pseudo Dice).

Settings come from the ``ssl_simclr`` block (:mod:`nnunet_ssl.ssl.simclr.settings`).
"""
from __future__ import annotations

import torch

from nnunet_ssl.ssl.base import nnUNetTrainerContrastive
from nnunet_ssl.ssl.contrastive import gather, nt_xent
from nnunet_ssl.ssl.simclr.settings import SimCLRSettings


class nnUNetTrainerSimCLR(nnUNetTrainerContrastive):
    """SimCLR; see the module docstring."""

    settings_class = SimCLRSettings

    def pretext_batch(self, data, generator):
        first, second = self.views(data, generator)
        return torch.cat([first, second]), {"batch": data.shape[0]}

    def pretext_loss(self, output, targets):
        n = targets["batch"]
        z1, _ = gather(output[:n], differentiable=True)
        z2, _ = gather(output[n:], differentiable=True)
        loss, correct = nt_xent(z1, z2, self.ssl_settings.temperature)
        return loss, {"correct": correct, "count": torch.tensor(2 * z1.shape[0])}
