"""The focal Tversky loss: hand-computed values, its special cases, and its trainers in nnU-Net."""
import json
import math

import pytest
import torch

from nnunet_ssl.errors import UserError
from nnunet_ssl.losses import trainers as ftl
from nnunet_ssl.losses.focal_tversky import FocalTverskyLoss, FocalTverskySettings


def _logits_for(p1):
    """Two-class logits (b, 2, ...) whose softmax gives probability ``p1`` to class 1."""
    p1 = torch.as_tensor(p1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p1), torch.log(p1 / (1 - p1))], 1)


def test_hand_computed_value_on_a_2x2_image():
    # class-1 probabilities and reference on one 2x2 image
    logits = _logits_for([[[0.9, 0.2], [0.6, 0.1]]])
    target = torch.tensor([[[[1, 0], [1, 0]]]])
    tp = 0.9 + 0.6
    fn = (1 - 0.9) + (1 - 0.6)
    fp = 0.2 + 0.1
    ti = tp / (tp + 0.7 * fn + 0.3 * fp)
    expected = (1 - ti) ** 0.75
    got = FocalTverskyLoss(smooth=0)(logits, target)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    # nnU-Net's smoothing (1e-5) moves it very little
    assert float(FocalTverskyLoss()(logits, target)) == pytest.approx(expected, abs=1e-5)


def test_two_samples_average_and_batch_dice_sums_first():
    logits = _logits_for([[[0.9, 0.2]], [[0.3, 0.8]]])  # (2, 2, 1, 2)
    target = torch.tensor([[[[1, 0]]], [[[0, 1]]]])
    a, b, g = 0.6, 0.4, 1.5
    # sample 0: tp 0.9, fn 0.1, fp 0.2; sample 1: tp 0.8, fn 0.2, fp 0.3
    per_sample = [(1 - 0.9 / (0.9 + a * 0.1 + b * 0.2)) ** g, (1 - 0.8 / (0.8 + a * 0.2 + b * 0.3)) ** g]
    pooled = (1 - 1.7 / (1.7 + a * 0.3 + b * 0.5)) ** g
    assert float(FocalTverskyLoss(a, b, g, smooth=0)(logits, target)) == pytest.approx(sum(per_sample) / 2)
    assert float(FocalTverskyLoss(a, b, g, smooth=0, batch_dice=True)(logits, target)) == pytest.approx(pooled)


def _reference_tversky(probs, onehot, alpha, beta, smooth):
    """1 - TI per (sample, class) from explicit per-voxel counts."""
    axes = tuple(range(2, probs.ndim))
    tp = (probs * onehot).sum(axes)
    fn = ((1 - probs) * onehot).sum(axes)
    fp = (probs * (1 - onehot)).sum(axes)
    return 1 - (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)


def test_gamma_1_is_the_tversky_loss_and_gamma_raises_it_per_class():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 1, 5, 6, 7))
    probs = torch.softmax(logits, 1)[:, 1:]
    onehot = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1)[:, 1:].double()
    ref = _reference_tversky(probs, onehot, 0.7, 0.3, 1e-5)  # (2, 2): background left out
    tversky = FocalTverskyLoss(gamma=1.0)(logits, target)
    assert float(tversky) == pytest.approx(float(ref.mean()), rel=1e-10)
    focal = FocalTverskyLoss(gamma=0.75)(logits, target)
    assert float(focal) == pytest.approx(float((ref ** 0.75).mean()), rel=1e-10)
    assert float(focal) > float(tversky)  # every 1 - TI < 1 grows under an exponent < 1


def test_alpha_beta_half_gamma_1_is_nnunets_soft_dice_loss():
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.helpers import softmax_helper_dim1

    torch.manual_seed(1)
    logits = torch.randn(2, 3, 6, 6, 6)
    target = torch.randint(0, 3, (2, 1, 6, 6, 6))
    for batch_dice in (False, True):
        dice = MemoryEfficientSoftDiceLoss(softmax_helper_dim1, batch_dice=batch_dice, do_bg=False, smooth=2e-5,
                                           ddp=False)
        ours = FocalTverskyLoss(0.5, 0.5, 1.0, batch_dice=batch_dice, smooth=1e-5)
        assert float(ours(logits, target)) == pytest.approx(1 + float(dice(logits, target)), abs=1e-6)


def test_counts_agree_with_nnunets_tp_fp_fn_under_an_ignore_mask():
    from nnunetv2.training.loss.dice import get_tp_fp_fn_tn

    torch.manual_seed(2)
    logits = torch.randn(2, 3, 4, 5, 6)
    labels = torch.randint(0, 4, (2, 1, 4, 5, 6))  # 3 is the ignore label
    loss = FocalTverskyLoss(ignore_label=3)
    tp, fn, fp = loss.soft_counts(logits, labels)
    mask = (labels != 3).float()
    ref_tp, ref_fp, ref_fn, _ = get_tp_fp_fn_tn(torch.softmax(logits, 1), torch.where(labels == 3, 0, labels),
                                                mask=mask)
    for ours, ref in ((tp, ref_tp), (fn, ref_fn), (fp, ref_fp)):
        assert torch.allclose(ours, ref[:, 1:], atol=1e-4)
    # whatever the network says on ignored voxels does not change the loss
    changed = torch.where(labels == 3, torch.randn_like(logits) * 10, logits)
    assert float(loss(changed, labels)) == pytest.approx(float(loss(logits, labels)), rel=1e-6)


def test_region_path_uses_sigmoids_every_channel_and_the_ignore_channel():
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    torch.manual_seed(3)
    logits = torch.randn(2, 2, 5, 5, 5)
    regions = torch.rand(2, 2, 5, 5, 5) > 0.6
    dice = MemoryEfficientSoftDiceLoss(torch.sigmoid, batch_dice=True, do_bg=True, smooth=2e-5, ddp=False)
    loss = FocalTverskyLoss(0.5, 0.5, 1.0, regions=True, batch_dice=True)
    assert float(loss(logits, regions)) == pytest.approx(1 + float(dice(logits, regions)), abs=1e-6)
    # hand check of one region of one voxel pair: sigmoid(0) = 0.5, sigmoid(log 3) = 0.75
    x = torch.tensor([[[0.0, math.log(3)]]])[:, :, None]  # (1, 1, 1, 2)
    y = torch.tensor([[[1, 0]]])[:, :, None].bool()
    ti = 0.5 / (0.5 + 0.7 * 0.5 + 0.3 * 0.75)
    assert float(FocalTverskyLoss(regions=True, smooth=0)(x, y)) == pytest.approx((1 - ti) ** 0.75)
    # with an ignore label the target's last channel marks the ignored voxels
    ignore = torch.rand(2, 1, 5, 5, 5) > 0.7
    masked = FocalTverskyLoss(regions=True, ignore_label=3)
    target = torch.cat([regions, ignore], 1)
    changed = torch.where(ignore, torch.randn_like(logits) * 10, logits)
    assert float(masked(changed, target)) == pytest.approx(float(masked(logits, target)), rel=1e-6)
    assert float(masked(logits, target)) != pytest.approx(float(FocalTverskyLoss(regions=True)(logits, regions)))


def test_gradient_flows_lowers_the_loss_and_stays_finite_at_a_perfect_prediction():
    torch.manual_seed(4)
    target = torch.randint(0, 3, (2, 1, 6, 6, 6))
    logits = torch.randn(2, 3, 6, 6, 6, requires_grad=True)
    loss = FocalTverskyLoss()
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = logits - 50 * logits.grad
    assert float(loss(stepped, target)) < value.item()
    # a saturated softmax gives TI = 1 exactly in float32: (1 - TI) ** 0.75 must not give inf * 0
    perfect = (torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1) * 200.0).requires_grad_()
    out = loss(perfect, target)
    out.backward()
    assert out.item() < 1e-4 and torch.isfinite(perfect.grad).all()


def test_settings_block_is_validated_by_name():
    assert FocalTverskySettings.from_dict(None) == FocalTverskySettings(0.7, 0.3, 0.75)
    assert FocalTverskySettings.from_configuration({"focal_tversky": {"gamma": 1}}).gamma == 1
    cases = [({"alfa": 0.7}, "unknown focal_tversky setting(s) ['alfa']; known: ['alpha', 'beta', 'gamma']"),
             ({"alpha": "0.7"}, "'alpha' must be a number, got \"0.7\""),
             ({"beta": True}, "'beta' must be a number, got true"),
             ({"gamma": None}, "'gamma' must be a number, got null"),
             ({"alpha": -0.1}, "must be >= 0, got alpha=-0.1"),
             ({"alpha": 0, "beta": 0}, "alpha + beta > 0"),
             ({"gamma": 0}, "'gamma' must be > 0 (e.g. 0.75), got 0")]
    for block, message in cases:
        with pytest.raises(UserError) as e:
            FocalTverskySettings.from_dict(block)
        assert message in str(e.value), block
    with pytest.raises(UserError, match="must be an object"):
        FocalTverskySettings.from_dict([0.7, 0.3])


# ---------------------------------------------------------------- trainers on the planned dataset
def _trainer(cls, env, block=None, dataset_json_update=None, finetune=None):
    pre = env["root"] / "preprocessed" / "Dataset501_Tiny"
    plans = json.loads((pre / "nnUNetPlans.json").read_text(encoding="utf-8"))
    dataset_json = json.loads((pre / "dataset.json").read_text(encoding="utf-8"))
    dataset_json.update(dataset_json_update or {})
    cfg = plans["configurations"]["3d_fullres"]
    if block is not None:
        cfg["focal_tversky"] = block
    if finetune is not None:
        cfg["finetune"] = finetune
    plans["continue_training"] = False
    torch.manual_seed(0)
    return cls(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))


def test_trainer_loss_has_nnunets_deep_supervision_weights_and_the_plans_values(nnunet_env):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = _trainer(ftl.nnUNetTrainerFocalTversky, nnunet_env, {"alpha": 0.6, "beta": 0.4, "gamma": 1.25})
    trainer.initialize()
    stock = _trainer(nnUNetTrainer, nnunet_env)
    stock.initialize()
    assert isinstance(trainer.loss, DeepSupervisionWrapper)
    weights = trainer.loss.weight_factors
    assert weights == stock.loss.weight_factors and len(weights) == 3
    assert weights == pytest.approx((4 / 6, 2 / 6, 0.0))  # 1, 1/2, then the lowest output left out
    inner = trainer.loss.loss
    assert isinstance(inner, FocalTverskyLoss) and not inner.regions
    assert (inner.alpha, inner.beta, inner.gamma) == (0.6, 0.4, 1.25)
    assert inner.batch_dice == trainer.configuration_manager.batch_dice
    # the wrapped loss is the weighted sum over the resolutions
    torch.manual_seed(5)
    outputs = [torch.randn(2, 2, 8 // 2 ** i, 8 // 2 ** i, 8 // 2 ** i) for i in range(3)]
    targets = [torch.randint(0, 2, (2, 1, 8 // 2 ** i, 8 // 2 ** i, 8 // 2 ** i)) for i in range(3)]
    expected = sum(w * float(inner(o, t)) for w, o, t in zip(weights, outputs, targets))
    assert float(trainer.loss(outputs, targets)) == pytest.approx(expected)
    log = open(trainer.log_file, encoding="utf-8").read()
    assert "focal Tversky loss alpha=0.6 (false negatives), beta=0.4 (false positives), gamma=1.25" in log


def test_bad_plans_block_stops_the_trainer_before_any_data(nnunet_env):
    with pytest.raises(UserError, match=r"unknown focal_tversky setting\(s\) \['delta'\]"):
        _trainer(ftl.nnUNetTrainerFocalTversky, nnunet_env, {"delta": 1})


def test_region_based_trainer_trains_with_sigmoids(nnunet_env):
    regions = {"labels": {"background": 0, "lesion": [1, 2], "core": 2}, "regions_class_order": [1, 2]}
    trainer = _trainer(ftl.nnUNetTrainerFocalTversky, nnunet_env, dataset_json_update=regions)
    trainer.num_iterations_per_epoch = 1
    trainer.on_train_start()
    try:
        assert trainer.label_manager.has_regions
        inner = trainer.loss.loss
        assert inner.regions and inner.ignore_label is None
        batch = next(trainer.dataloader_train)
        assert batch["target"][0].shape[1] == 2  # one channel per region
        out = trainer.train_step(batch)
        assert math.isfinite(out["loss"]) and 0 < out["loss"] <= 1
    finally:
        trainer.on_train_end()


def test_finetuning_strategies_keep_their_schedule_with_the_focal_tversky_loss(nnunet_env):
    from nnunet_ssl.finetune.freezing import split_parameters

    trainer = _trainer(ftl.nnUNetTrainerUnfreezeAtNFocalTversky, nnunet_env, {"gamma": 1.0},
                       finetune={"num_epochs": 4, "unfreeze_epoch": 2})
    trainer.initialize()
    assert isinstance(trainer.loss.loss, FocalTverskyLoss) and trainer.loss.loss.gamma == 1.0
    assert trainer.num_epochs == 4
    encoder, _ = split_parameters(trainer.network)
    trainer.apply_freezing(1)
    assert not any(p.requires_grad for p in encoder)
    trainer.apply_freezing(2)
    assert all(p.requires_grad for p in encoder)
    assert _trainer(ftl.nnUNetTrainerFrozenEncoderFocalTversky, nnunet_env).unfreeze_epochs(4) == [math.inf] * 4
    gradual = _trainer(ftl.nnUNetTrainerGradualUnfreezeFocalTversky, nnunet_env,
                       finetune={"num_epochs": 20, "gradual_start_epoch": 1, "gradual_interval": 2})
    assert gradual.unfreeze_epochs(4) == [7, 5, 3, 1]
