"""``nnUNetTrainerCMUNet``: contrastive + masked pretraining of the whole U-Net (CM-UNet, CMAE-style).

A contrastive method on :class:`~nnunet_ssl.ssl.base.nnUNetTrainerContrastive` (Challier et al.,
after CMAE, Huang et al. 2023; the base documents the contract with nnU-Net and the views):

* Network (:class:`CMUNetNetwork`): the plans' U-Net, trained whole (the decoder
  reconstructs), a projection head and a predictor on the pooled bottleneck (the online
  branch), and a momentum copy of encoder and head (the target branch, ``momentum.*``).
* Batch: two views per patch. The first is masked in whole blocks (as ``nnUNetTrainerMAE``:
  ``mask_ratio`` of the blocks set to 0) and goes through the online branch, with MAE's
  sparse encoding (``sparse``, default on: the masked sites stay empty at every encoder stage,
  so the pooled bottleneck sees the visible sites only); the second, unmasked, through the
  target branch (no gradients, no sparse encoding).
* Loss: the masked reconstruction error of the first view (masked voxels only) plus
  ``contrastive_weight`` times the InfoNCE of each online prediction against its target
  embedding, the other samples' (of every process) the negatives. After each optimiser
  step the target branch moves towards the online one (``momentum``).
* Score: the reconstruction score ``1 - loss / loss of predicting 0`` (validation, as MAE);
  the retrieval accuracy of the contrastive term goes to the log.

Stock ``-pretrained_weights`` loads every U-Net key (decoder included) and ignores the
heads; ``nnunet-ssl-transfer`` takes the encoder. Settings come from the ``ssl_cmunet`` block
(:mod:`nnunet_ssl.ssl.cmunet.settings`).
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_ssl.finetune.freezing import unwrap
from nnunet_ssl.ssl.base import nnUNetTrainerContrastive
from nnunet_ssl.ssl.cmunet.settings import CMUNetSettings
from nnunet_ssl.ssl.contrastive import MomentumBranch, gather, info_nce, projection_head, take_unet
from nnunet_ssl.ssl.mae.trainer import SparseMaskedEncoding
from nnunet_ssl.ssl.restoration import block_mask, masked_mse, reconstruction_score


class CMUNetNetwork(nn.Module):
    """The U-Net (keys unchanged), ``head`` and ``predictor`` on its pooled bottleneck, and the momentum
    branch; ``forward(x) -> (reconstruction, prediction)``."""

    def __init__(self, unet: nn.Module, head: nn.Module, predictor: nn.Module):
        super().__init__()
        take_unet(self, unet)
        self.head = head
        self.predictor = predictor
        self.momentum = MomentumBranch(self.encoder, self.head)

    def forward(self, x: torch.Tensor):
        skips = self.encoder(x)
        bottleneck = skips[-1].flatten(2).mean(dim=2)
        return self.decoder(skips), self.predictor(self.head(bottleneck))


class nnUNetTrainerCMUNet(SparseMaskedEncoding, nnUNetTrainerContrastive):
    """CM-UNet; see the module docstring."""

    settings_class = CMUNetSettings
    TRAINS_DECODER = True  # the decoder reconstructs the masked view

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mask_block = self.ssl_settings.block_for(self.configuration_manager.patch_size,
                                                      self.configuration_manager.network_arch_init_kwargs["strides"])

    @classmethod
    def wrap_network(cls, unet, head, settings):
        d = settings.projection_dim
        return CMUNetNetwork(unet, head, projection_head(d, settings.hidden_dim, d))

    def initialize(self):
        super().initialize()
        s = self.ssl_settings
        self.install_sparse_encoder()
        self.print_to_log_file(f"CM-UNet: mask ratio {s.mask_ratio}, blocks {list(self.mask_block)}, "
                               f"contrastive weight {s.contrastive_weight}, sparse encoder {s.sparse}")

    def pretext_batch(self, data, generator):
        online_view, target_view = self.views(data, generator)
        mask = block_mask(online_view.shape, self.mask_block, self.ssl_settings.mask_ratio, generator,
                          online_view.device)
        with self.autocast():
            keys = unwrap(self.network).momentum(target_view).float()
        return online_view.masked_fill(mask, 0), {"target": online_view, "mask": mask, "keys": keys}

    def pretext_loss(self, output, targets):
        reconstruction, prediction = output
        target, mask = targets["target"], targets["mask"]
        restoration = masked_mse(reconstruction.float(), target.float(), mask)
        keys, offset = gather(targets["keys"])
        contrastive, correct = info_nce(prediction, keys, None, self.ssl_settings.temperature, offset)
        with torch.no_grad():
            baseline = masked_mse(torch.zeros_like(target, dtype=torch.float32), target.float(), mask)
        loss = restoration + self.ssl_settings.contrastive_weight * contrastive
        return loss, {"restoration": restoration.detach(), "baseline": baseline, "correct": correct,
                      "count": torch.tensor(prediction.shape[0])}

    def after_train_step(self, targets: dict) -> None:
        network = unwrap(self.network)
        network.momentum.update(network.encoder, network.head, self.ssl_settings.momentum)

    def validation_score(self, outputs: dict) -> float:
        accuracy = super().validation_score(outputs)
        self.print_to_log_file(f"CM-UNet validation: contrastive retrieval accuracy {accuracy:.3f}")
        return reconstruction_score(outputs["restoration"], outputs["baseline"])
