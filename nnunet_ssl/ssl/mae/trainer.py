"""``nnUNetTrainerMAE``: masked-image-modelling pretraining of the whole U-Net the plans name.

A restoration method on :class:`~nnunet_ssl.ssl.base.nnUNetTrainerRestoration`
(which documents the contract with nnU-Net: network, steps, score, checkpoint):

* Corruption: whole aligned blocks of the augmented patch ``data`` are set to 0 (the
  mean after nnU-Net's normalisation), exactly ``mask_ratio`` of the blocks per sample.
* Sparse encoding (``sparse``, default on; SparK): during the steps the features of masked
  sites are set to 0 after every conv block of the encoder, at every stage's resolution
  (:class:`~nnunet_ssl.ssl.mae.masking.sparse_encoder`), so the encoder never fills the hidden
  regions from their surroundings; the decoder fills them. The trained network is a plain U-Net.
* Loss: the mean squared error on the masked voxels
  (:func:`~nnunet_ssl.ssl.mae.masking.masked_reconstruction_loss`), optionally
  against per-block normalised targets (``norm_pix_loss``).
* Score: ``1 - loss / loss of predicting 0`` on the validation batches (0: no
  better than the mask's fill value, 1: perfect), logged as nnU-Net's pseudo Dice.

Settings come from the ``ssl_mae`` block of the plans configuration
(:mod:`nnunet_ssl.ssl.mae.settings`).
"""
from __future__ import annotations

import torch

from nnunet_ssl.ssl.base import VALIDATION_SEED, nnUNetTrainerRestoration
from nnunet_ssl.finetune.freezing import unwrap
from nnunet_ssl.ssl.mae.masking import block_mask, masked_reconstruction_loss, SparseEncoder
from nnunet_ssl.ssl.mae.settings import MAESettings
from nnunet_ssl.ssl.restoration import reconstruction_score  # noqa: F401  (its home before the base)

VALIDATION_MASK_SEED = VALIDATION_SEED


class SparseMaskedEncoding:
    """The sparse encoding of a masked method's trainer (MAE, CM-UNet): with the ``sparse`` setting
    on, the encoder's masked sites are kept empty during every step's forward pass, the visible
    sites being the voxels that ``targets["mask"]`` leaves unmasked in every channel."""

    def install_sparse_encoder(self) -> None:
        """Before the first forward pass, so that ``torch.compile`` (lazy) traces the hooks."""
        self._sparse = SparseEncoder(unwrap(self.network).encoder) if self.ssl_settings.sparse else None

    def forward_context(self, targets):
        if getattr(self, "_sparse", None) is None:
            return super().forward_context(targets)
        return self._sparse.active(~targets["mask"].any(dim=1, keepdim=True))


class nnUNetTrainerMAE(SparseMaskedEncoding, nnUNetTrainerRestoration):
    """Masked reconstruction pretraining; see the module docstring."""

    settings_class = MAESettings

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mask_block = self.ssl_settings.block_for(self.configuration_manager.patch_size,
                                                      self.configuration_manager.network_arch_init_kwargs["strides"])

    @property
    def _mask_generator(self) -> torch.Generator:
        return self._train_generator

    def initialize(self):
        super().initialize()
        s = self.ssl_settings
        self.install_sparse_encoder()
        self.print_to_log_file(f"MAE: mask ratio {s.mask_ratio}, blocks {list(self.mask_block)} "
                               f"of patches {list(self.configuration_manager.patch_size)}, "
                               f"norm_pix_loss {s.norm_pix_loss}, sparse encoder {s.sparse}")

    def corrupt(self, data, generator):
        mask = block_mask(data.shape, self.mask_block, self.ssl_settings.mask_ratio, generator, data.device)
        return data.masked_fill(mask, 0), mask

    def restoration_loss(self, prediction, target, mask):
        return masked_reconstruction_loss(prediction, target, mask, self.ssl_settings.norm_pix_loss, self.mask_block)
