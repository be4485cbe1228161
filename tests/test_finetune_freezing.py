"""Freezing, schedules, warm-up and settings on networks built directly: no nnU-Net trainer, fast."""
import math

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from nnunet_ssl.finetune.freezing import (
    NEVER, apply_frozen_stages, default_gradual_schedule, encoder_parameter_names, encoder_prefixes,
    encoder_stages, frozen_at, gradual_unfreeze_epochs, set_trainable, split_parameters, unwrap)
from nnunet_ssl.finetune.settings import FinetuneSettings, apply_preset
from nnunet_ssl.finetune.warmup import EpochLRScheduler, default_warmup_epochs, poly_lr, warmup_poly_lr


def _unet(norm=torch.nn.InstanceNorm3d, n_in=1):
    torch.manual_seed(0)
    # deep supervision on, as nnU-Net trains: every segmentation layer gets a gradient
    return PlainConvUNet(n_in, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], 1, 2, 1, True,
                         norm, {"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU, deep_supervision=True)


def _sgd(params):
    # nnU-Net's optimiser
    return torch.optim.SGD(params, 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)


def _step(net, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 8, 16, 16, generator=g)
    opt.zero_grad(set_to_none=True)
    sum(out.square().mean() for out in net(x)).backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
    opt.step()


def _snapshot(params):
    return [p.detach().clone() for p in params]


def test_encoder_and_decoder_split_by_identity_without_the_decoder_alias(tiny_unet):
    encoder, rest = split_parameters(tiny_unet)
    assert {id(p) for p in encoder} == {id(p) for p in tiny_unet.encoder.parameters()}
    assert not {id(p) for p in encoder} & {id(p) for p in rest}
    assert len(encoder) + len(rest) == len(list(tiny_unet.parameters()))
    # the decoder module itself holds the encoder; "rest" must not
    assert {id(p) for p in tiny_unet.decoder.encoder.parameters()} <= {id(p) for p in encoder}
    assert all(n.startswith("encoder.stages.") for n in encoder_parameter_names(tiny_unet))
    assert encoder_prefixes(tiny_unet) == ("encoder.stages",)
    # torch.compile's wrapper is seen through
    compiled = torch.compile(tiny_unet)
    assert unwrap(compiled) is tiny_unet
    assert [id(p) for p in split_parameters(compiled)[0]] == [id(p) for p in encoder]


def test_stages_run_from_stem_to_deepest_for_both_unets(tiny_unet):
    stages = encoder_stages(tiny_unet)
    assert [s is t for s, t in zip(stages, tiny_unet.encoder.stages)] == [True] * 3
    res = ResidualEncoderUNet(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], 1, 3, 1, True,
                              torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU)
    assert encoder_prefixes(res) == ("encoder.stem", "encoder.stages")
    stages = encoder_stages(res)
    assert stages[0] is res.encoder.stem and stages[1:] == list(res.encoder.stages)
    assert {id(p) for s in stages for p in s.parameters()} == {id(p) for p in res.encoder.parameters()}


def test_frozen_encoder_gets_no_update_weight_decay_or_momentum_then_trains_when_unfrozen():
    net = _unet()
    opt = _sgd(net.parameters())
    encoder, rest = split_parameters(net)
    _step(net, opt, 0)  # momentum buffers exist for every parameter now
    assert all("momentum_buffer" in opt.state[p] for p in encoder)

    assert apply_frozen_stages(net, [True, True, True], opt) == len(encoder)
    enc0, dec0 = _snapshot(encoder), _snapshot(rest)
    for k in range(3):
        _step(net, opt, k + 1)
    assert all(p.grad is None and not p.requires_grad for p in encoder)
    assert all(torch.equal(a, b) for a, b in zip(enc0, encoder)), "frozen encoder changed"
    assert all(not torch.equal(a, b) for a, b in zip(dec0, rest)), "decoder did not train"

    apply_frozen_stages(net, [False, False, False], opt)
    assert not any(p in opt.state for p in encoder), "stale momentum kept on unfreezing"
    _step(net, opt, 9)
    assert all(not torch.equal(a, b) for a, b in zip(enc0, encoder) if b.requires_grad)


def test_frozen_batchnorm_keeps_its_running_statistics():
    net = _unet(norm=torch.nn.BatchNorm3d)
    stages = encoder_stages(net)
    net.train()
    set_trainable(stages, False)
    bn = [m for m in stages[0].modules() if isinstance(m, torch.nn.BatchNorm3d)][0]
    before = bn.running_mean.clone()
    net(torch.randn(2, 1, 8, 16, 16))
    assert not bn.training and torch.equal(bn.running_mean, before)
    decoder_bn = [m for m in net.decoder.stages.modules() if isinstance(m, torch.nn.BatchNorm3d)][0]
    assert decoder_bn.training


def test_gradual_schedule_deepest_first_stem_last():
    assert gradual_unfreeze_epochs(3, 2, 3) == [8, 5, 2]
    flags = [frozen_at(e, gradual_unfreeze_epochs(3, 2, 3)) for e in range(10)]
    assert flags[0] == flags[1] == [True, True, True]
    assert flags[2] == [True, True, False]  # deepest stage first
    assert flags[5] == [True, False, False]
    assert flags[8] == flags[9] == [False, False, False]  # stem last
    assert default_gradual_schedule(100, 6) == (10, 8)
    assert gradual_unfreeze_epochs(6, *default_gradual_schedule(100, 6)) == [50, 42, 34, 26, 18, 10]
    assert frozen_at(10**6, [NEVER]) == [True]
    with pytest.raises(ValueError):
        gradual_unfreeze_epochs(0, 1, 1)


def test_warmup_learning_rates_match_the_formula():
    lr0, E, W = 0.01, 20, 4
    got = [warmup_poly_lr(e, lr0, E, W) for e in range(E)]
    expected = [lr0 * (e + 1) / W if e < W else lr0 * (1 - (e - W) / (E - W)) ** 0.9 for e in range(E)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[W - 1] == got[W] == lr0 and got[-1] < got[W]
    assert [warmup_poly_lr(e, lr0, E, 0) for e in range(E)] == [poly_lr(e, lr0, E) for e in range(E)]
    assert default_warmup_epochs(100) == 5 and default_warmup_epochs(10) == 1
    with pytest.raises(ValueError):
        warmup_poly_lr(0, lr0, 10, 10)

    net = _unet()
    encoder, rest = split_parameters(net)
    opt = torch.optim.SGD([{"params": rest}, {"params": encoder, "lr_scale": 0.1}], lr0)
    sched = EpochLRScheduler(opt, lambda e: warmup_poly_lr(e, lr0, E, W))
    for e in (0, 3, 10):
        sched.step(e)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected[e])
        assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * expected[e])


def test_settings_from_plans_block_and_presets():
    s = FinetuneSettings.from_configuration({"finetune": {"unfreeze_epoch": 50, "num_epochs": 100}})
    assert (s.unfreeze_epoch, s.num_epochs, s.encoder_lr_factor) == (50, 100, 0.1)
    assert FinetuneSettings.from_configuration({}) == FinetuneSettings()
    with pytest.raises(ValueError, match="Unknown finetune setting"):
        FinetuneSettings.from_dict({"unfreeze_epochs": 3})
    with pytest.raises(ValueError, match="non-negative"):
        FinetuneSettings.from_dict({"warmup_epochs": -1})
    fixed, overridden = apply_preset(s, {"num_epochs": 100, "unfreeze_epoch": 33})
    assert fixed.unfreeze_epoch == 33 and overridden == ["unfreeze_epoch"]
    assert apply_preset(FinetuneSettings(), {"unfreeze_epoch": 66})[1] == []
    assert math.isinf(NEVER)
