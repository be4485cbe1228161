"""``nnUNetTrainerMoCo``: MoCo v2, a query encoder against a momentum key encoder and a queue of keys.

A contrastive method on :class:`~nnunet_ssl.ssl.base.nnUNetTrainerContrastive` (He et al. 2020,
Chen et al. 2020; the base documents the contract with nnU-Net, the views and the network):

* Network: the base's (U-Net encoder, projection head on the pooled bottleneck) plus, in the
  same module so that checkpoints and resume carry them, a momentum copy of encoder and head
  (``momentum.*``) and the queue (``queue.*``,
  :class:`~nnunet_ssl.ssl.contrastive.FeatureQueue`). Stock ``-pretrained_weights`` ignores
  those keys; ``nnunet-ssl-transfer`` takes the online encoder.
* Batch: two views per patch; the first goes through the query encoder, the second through
  the key encoder (no gradients).
* Loss: InfoNCE of each query against its key and the queue
  (:func:`~nnunet_ssl.ssl.contrastive.info_nce`). After each optimiser step the key encoder
  moves towards the query encoder (``momentum``) and the step's keys, gathered from every
  process, replace the oldest in the queue.
* Score: how often the query scores its own key above every queued key (validation).

Settings come from the ``ssl_moco`` block (:mod:`nnunet_ssl.ssl.moco.settings`).
"""
from __future__ import annotations

import torch

from nnunet_ssl.finetune.freezing import unwrap
from nnunet_ssl.ssl.base import nnUNetTrainerContrastive
from nnunet_ssl.ssl.contrastive import FeatureQueue, MomentumBranch, PooledHeadNetwork, gather, info_nce
from nnunet_ssl.ssl.moco.settings import MoCoSettings


class MoCoNetwork(PooledHeadNetwork):
    """:class:`PooledHeadNetwork` with a momentum branch and the queue; ``forward`` is the query branch."""

    def __init__(self, unet, head, queue_size: int):
        super().__init__(unet, head)
        self.momentum = MomentumBranch(self.encoder, self.head)
        out_features = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1].out_features
        self.queue = FeatureQueue(queue_size, out_features)


class nnUNetTrainerMoCo(nnUNetTrainerContrastive):
    """MoCo v2; see the module docstring."""

    settings_class = MoCoSettings

    @classmethod
    def wrap_network(cls, unet, head, settings):
        return MoCoNetwork(unet, head, settings.queue_size)

    def pretext_batch(self, data, generator):
        query_view, key_view = self.views(data, generator)
        network = unwrap(self.network)
        with self.autocast():
            keys = network.momentum(key_view).float()
        return query_view, {"keys": keys, "queue": network.queue.ordered().clone()}

    def pretext_loss(self, output, targets):
        loss, correct = info_nce(output, targets["keys"], targets["queue"], self.ssl_settings.temperature)
        return loss, {"correct": correct, "count": torch.tensor(output.shape[0])}

    def after_train_step(self, targets: dict) -> None:
        network = unwrap(self.network)
        network.momentum.update(network.encoder, network.head, self.ssl_settings.momentum)
        keys, _ = gather(targets["keys"])
        network.queue.push(keys)
