"""Masked image modelling: block masks, the masked loss, settings, nnUNetTrainerMAE, and fine-tuning from it."""
import json

import pytest
import torch

from nnunet_ssl.ssl.mae.masking import block_mask, masked_reconstruction_loss, normalise_blocks
from nnunet_ssl.ssl.mae.settings import MAESettings


# ------------------------------------------------------------------ masking
@pytest.mark.parametrize("block, ratio", [((4, 8, 8), 0.6), (8, 0.6), ((2, 4, 4), 0.25)])
def test_exact_masked_fraction_per_sample(block, ratio):
    shape = (3, 2, 16, 32, 32)
    mask = block_mask(shape, block, ratio, torch.Generator().manual_seed(0))
    b = (block,) * 3 if isinstance(block, int) else block
    n_blocks = (16 // b[0]) * (32 // b[1]) * (32 // b[2])
    assert mask.shape == (3, 1, 16, 32, 32) and mask.dtype == torch.bool
    expected = round(ratio * n_blocks) / n_blocks
    for sample in mask:
        assert sample.float().mean().item() == pytest.approx(expected, abs=1e-9)


def test_masks_are_unions_of_whole_aligned_blocks():
    block = (4, 8, 8)
    mask = block_mask((2, 1, 16, 32, 32), block, 0.5, torch.Generator().manual_seed(3))
    cells = mask.reshape(2, 1, 4, 4, 4, 8, 4, 8).float()  # (g0, b0, g1, b1, g2, b2)
    per_block = cells.mean(dim=(3, 5, 7))
    assert set(per_block.unique().tolist()) == {0.0, 1.0}  # every block all hidden or all visible


def test_seeds_repeat_and_differ():
    draw = lambda seed: block_mask((2, 1, 8, 16, 16), (2, 4, 4), 0.6, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    both = draw(1)
    assert not torch.equal(both[0], both[1])  # samples of one batch get their own masks


def test_patch_not_tiled_by_blocks_is_refused():
    with pytest.raises(ValueError, match="not a multiple of the block size"):
        block_mask((1, 1, 10, 16, 16), (4, 4, 4), 0.5)


# --------------------------------------------------------------------- loss
def test_loss_hand_computed_and_ignores_unmasked_voxels():
    target = torch.tensor([0.0, 2.0, 7.0]).view(1, 1, 3)
    mask = torch.tensor([True, True, False]).view(1, 1, 3)
    prediction = torch.tensor([1.0, 5.0, 100.0]).view(1, 1, 3)
    assert masked_reconstruction_loss(prediction, target, mask).item() == pytest.approx((1 + 9) / 2)
    other = prediction.clone()
    other[..., 2] = float("inf")  # whatever lies outside the mask
    assert masked_reconstruction_loss(other, target, mask).item() == pytest.approx(5.0)


def test_gradients_only_on_masked_voxels():
    torch.manual_seed(0)
    mask = block_mask((2, 1, 4, 8, 8), 2, 0.5, torch.Generator().manual_seed(0))
    prediction = torch.randn(2, 2, 4, 8, 8, requires_grad=True)
    masked_reconstruction_loss(prediction, torch.randn(2, 2, 4, 8, 8), mask).backward()
    hidden = mask.expand_as(prediction)
    assert torch.all(prediction.grad[~hidden] == 0)
    assert torch.all(prediction.grad[hidden] != 0)


def test_norm_pix_loss_normalises_each_block():
    torch.manual_seed(0)
    target = torch.randn(1, 1, 4, 4, 4) * 5 + 3
    normalised = normalise_blocks(target, 2)
    blocks = normalised.reshape(1, 1, 2, 2, 2, 2, 2, 2)
    assert torch.allclose(blocks.mean(dim=(3, 5, 7)), torch.zeros(1), atol=1e-5)
    assert torch.allclose(blocks.var(dim=(3, 5, 7), unbiased=False), torch.ones(1), atol=1e-3)
    mask = torch.ones(1, 1, 4, 4, 4, dtype=torch.bool)
    assert masked_reconstruction_loss(normalised, target, mask, norm_pix_loss=True, block=2).item() < 1e-8


# ----------------------------------------------------------------- settings
def test_settings_defaults_and_validation():
    s = MAESettings.from_dict(None)
    assert (s.mask_ratio, s.block_size, s.norm_pix_loss) == (0.6, None, False)
    assert MAESettings.from_dict({"block_size": [2, 4, 4], "num_epochs": 3.0}).to_dict()["block_size"] == [2, 4, 4]
    with pytest.raises(ValueError, match=r"unknown ssl_mae setting\(s\) \['mask_ratoi'\]"):
        MAESettings.from_dict({"mask_ratoi": 0.5})
    for name, value in [("mask_ratio", "0.6"), ("mask_ratio", 1.5), ("block_size", [4, 0]),
                        ("norm_pix_loss", 1), ("num_epochs", 2.5), ("num_iterations_per_epoch", True)]:
        with pytest.raises(ValueError, match=f"'{name}'"):
            MAESettings.from_dict({name: value})


def test_default_block_divides_the_encoder_stride():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]  # total (4, 16, 16)
    assert MAESettings().block_for([16, 64, 64], strides) == (4, 8, 8)
    assert MAESettings().block_for([32, 32, 32], [1, 2, 2, 2, 2]) == (8, 8, 8)
    assert MAESettings.from_dict({"block_size": 4}).block_for([8, 16, 16], strides) == (4, 4, 4)
    with pytest.raises(ValueError, match="does not tile"):
        MAESettings.from_dict({"block_size": [3, 4, 4]}).block_for([8, 16, 16], strides)


# ------------------------------------------------------------------ trainer
def _plans_and_json(root):
    folder = root / "preprocessed" / "Dataset501_Tiny"
    return (json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8")),
            json.loads((folder / "dataset.json").read_text(encoding="utf-8")))


def test_train_steps_lower_the_masked_loss_on_a_fixed_batch(nnunet_env):
    from nnunet_ssl.ssl.mae.trainer import VALIDATION_MASK_SEED, nnUNetTrainerMAE

    plans, dataset_json = _plans_and_json(nnunet_env["root"])
    plans["configurations"]["3d_fullres"]["ssl_mae"] = {"mask_ratio": 0.5, "num_epochs": 3}
    plans["continue_training"] = False
    trainer = nnUNetTrainerMAE(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    assert trainer.num_epochs == 3 and not trainer.enable_deep_supervision
    network = trainer.network
    assert network.decoder.seg_layers[-1].out_channels == trainer.num_input_channels
    torch.manual_seed(0)
    patch = trainer.configuration_manager.patch_size
    smooth = torch.nn.functional.avg_pool3d(torch.randn(2, 1, *patch), 5, 1, 2) * 3  # learnable structure
    batch = {"data": smooth, "target": None}
    trainer.on_train_epoch_start()
    losses = []
    for _ in range(8):
        trainer._mask_generator.manual_seed(0)  # the same mask every step
        losses.append(float(trainer.train_step(batch)["loss"]))
    assert losses[-1] < 0.8 * losses[0], losses
    trainer.on_validation_epoch_start()
    out = trainer.validation_step(batch)
    # the baseline is the loss of predicting the fill value 0 on the validation mask
    mask = block_mask(smooth.shape, trainer.mask_block, 0.5, torch.Generator().manual_seed(VALIDATION_MASK_SEED))
    assert float(out["baseline"]) == pytest.approx((smooth[mask] ** 2).mean().item(), rel=1e-5)
    trainer.on_validation_epoch_end([out, out])
    assert trainer.logger.get_value("mean_fg_dice", step=-1) == pytest.approx(1 - out["loss"] / out["baseline"])


def test_loss_of_half_precision_predictions_is_computed_in_float32():
    # under CUDA autocast the network predicts in float16, whose sum over a patch overflows (max 65504)
    prediction = torch.zeros(1, 1, 64, 64, 64, dtype=torch.float16)
    target = torch.full((1, 1, 64, 64, 64), 2.0)
    mask = torch.ones(1, 1, 64, 64, 64, dtype=torch.bool)
    loss = masked_reconstruction_loss(prediction, target, mask)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(4.0)


# ------------------------------------------------------------------------ sparse encoding (SparK)
def test_visible_sites_at_coarser_maps_are_any_visible_voxel_of_the_cell():
    from nnunet_ssl.ssl.mae.masking import visible_at

    visible = torch.zeros(1, 1, 5, 4, dtype=torch.bool)
    visible[0, 0, 4, 0] = True  # the last row: its cell is the odd one of a ceil grid
    visible[0, 0, 1, 3] = True
    assert visible_at(visible, (3, 2))[0, 0].tolist() == [[False, True], [False, False], [True, False]]
    assert visible_at(visible, (5, 4)) is visible
    with pytest.raises(ValueError, match="not a strided grid"):
        visible_at(visible, (4, 4))


def test_sparse_encoder_keeps_masked_sites_empty_at_every_stage(tiny_unet):
    from nnunet_ssl.ssl.mae.masking import SparseEncoder, block_mask, visible_at

    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = block_mask(x.shape, (4, 4, 4), 0.6, torch.Generator().manual_seed(1), x.device)
    visible = ~mask.any(dim=1, keepdim=True)
    masked = x.masked_fill(mask, 0)
    tiny_unet.encoder.return_skips = True
    sparse = SparseEncoder(tiny_unet.encoder)
    with torch.no_grad():
        with sparse.active(visible):
            stages = tiny_unet.encoder(masked)
            tiny_unet(masked)  # the whole U-Net runs with it
        dense = tiny_unet.encoder(masked)
        with sparse.active(torch.ones_like(visible)):
            all_visible = tiny_unet.encoder(masked)
    for features, plain, full in zip(stages, dense, all_visible):
        hidden = ~visible_at(visible, features.shape[2:])
        assert hidden.any() and (features * hidden).abs().max() == 0  # nothing in the hidden sites
        assert (plain * hidden).abs().max() > 0  # a dense encoder fills them from their surroundings
        torch.testing.assert_close(full, plain)  # nothing hidden: the plain encoder
    sparse.remove()
    with torch.no_grad():
        torch.testing.assert_close(tiny_unet.encoder(masked)[-1], dense[-1])
