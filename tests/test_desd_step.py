"""The DeSD step as a GPU runs it: mixed precision, gradient scaling and torch.compile.

Each is checked against the plain float step from the same state. On the CPU: bfloat16
autocast, PyTorch's CPU GradScaler (the code path CUDA takes, without the float16 part) and
a compiled step; on CUDA (skipped without one): float16 autocast with nnU-Net's GradScaler.
"""
import copy

import pytest
import torch

from nnunet_ssl.desd.step import StepSchedule, make_optimizer, train_step
from test_desd_fast import PARAM_ATOL, _network, _settings, _views

SCHEDULE = StepSchedule(lr=1e-3, weight_decay=0.04, momentum=0.99, teacher_temp=0.04, freeze_last_layer=False)


def _pair(tiny_unet, dtype=torch.float32, device="cpu"):
    a = _network(tiny_unet).to(device=device, dtype=dtype)
    return a, copy.deepcopy(a)


def _step(net, views, **kwargs):
    opt = make_optimizer(net.student)
    return train_step(net, net.student, opt, *views, _settings(), SCHEDULE, **kwargs), opt


def _updates(before, after):
    return torch.cat([(a - b).flatten() for a, b in zip(after.student.parameters(), before.student.parameters())])


def test_bf16_autocast_step_on_the_cpu_is_close_to_the_fp32_step(tiny_unet):
    """One step under bfloat16 autocast against the float32 step from the same state.

    Tolerances: bfloat16 keeps 8 bits of mantissa, so a logit (at most 1 in size: unit embedding
    times unit prototype) is off by up to about 4e-3, which the teacher temperature of 0.04 turns
    into up to 0.1 in the softmax's input; the loss agrees to 5%. At this freshly initialised
    state student and teacher agree, so the loss's gradient is small and bfloat16's rounding is
    a large part of it (gradient cosine 0.73 here). AdamW's first step moves each element by
    about ``lr`` in the direction of its gradient's sign, so an element's update either agrees
    with the float32 one or differs by ``2 lr``: none may differ by more, and at least 75% must
    agree within ``0.1 lr`` (84% do with these seeds).
    """
    start, _ = _pair(tiny_unet)
    fp32, bf16 = copy.deepcopy(start), copy.deepcopy(start)
    views = [v.float() for v in _views()]
    seen = []
    bf16.student.heads[0].mlp[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    out32, _ = _step(fp32, views)
    out16, _ = _step(bf16, views, autocast_dtype=torch.bfloat16)
    assert seen == [torch.bfloat16]  # autocast did act
    assert float(out16["loss"]) == pytest.approx(float(out32["loss"]), rel=5e-2)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # master weights stay float32
    u32, u16 = _updates(start, fp32), _updates(start, bf16)
    close = (u16 - u32).abs() <= 0.1 * SCHEDULE.lr
    assert close.float().mean() >= 0.75
    assert (u16 - u32).abs().max() <= 2 * SCHEDULE.lr + 1e-7
    torch.testing.assert_close(bf16.center, fp32.center, rtol=5e-2, atol=2e-3)


def test_grad_scaler_step_equals_the_unscaled_step(tiny_unet):
    """The scaler path (scale, backward, unscale, clip, scaler.step) gives the plain step: the scale
    is a power of two, so scaling and unscaling are exact in float64."""
    a, b = _pair(tiny_unet, torch.float64)
    views = _views()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    opt_a, opt_b = make_optimizer(a.student), make_optimizer(b.student)
    for _ in range(2):
        out_a = train_step(a, a.student, opt_a, *views, _settings(), SCHEDULE)
        out_b = train_step(b, b.student, opt_b, *views, _settings(), SCHEDULE, grad_scaler=scaler)
        torch.testing.assert_close(out_a["loss"], out_b["loss"])
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=PARAM_ATOL, msg=name)
    assert scaler.get_scale() == 2.0 ** 10  # no overflow, no growth yet


def test_grad_scaler_skips_the_whole_step_when_a_gradient_is_not_finite(tiny_unet):
    """What float16 overflow looks like to the step: one non-finite gradient anywhere, and no
    student parameter moves (the scaler sees all gradients before AdamW runs)."""
    net, before = _pair(tiny_unet, torch.float64)
    first = net.student.encoder.stages[0][0].convs[0].conv.weight
    first.register_hook(lambda g: g * float("inf"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    _step(net, _views(), grad_scaler=scaler)
    for (name, x), y in zip(net.student.named_parameters(), before.student.parameters()):
        assert torch.equal(x, y), name
    assert scaler.get_scale() == 2.0 ** 9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: nnU-Net compiles only there")
def test_cuda_compiled_encoders_step_equals_the_eager_step(tiny_unet):
    """Two steps with ``torch.compile``d encoders against eager ones (float64) where the trainer compiles
    them: on CUDA, by nnU-Net's rule (on a 2-core CPU compiling alone took about 45 s). The state-dict
    keys of compiled encoders: test_trainer_compiles_the_encoders_where_nnunet_compiles."""
    eager, compiled = _pair(tiny_unet, torch.float64, device="cuda")
    compiled.compile_encoders()
    opt_e, opt_c = make_optimizer(eager.student), make_optimizer(compiled.student)
    for _ in range(2):
        views = [v.cuda() for v in _views()]
        out_e = train_step(eager, eager.student, opt_e, *views, _settings(), SCHEDULE)
        out_c = train_step(compiled, compiled.student, opt_c, *views, _settings(), SCHEDULE)
        torch.testing.assert_close(out_c["loss"], out_e["loss"])
    for (name, x), y in zip(compiled.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=PARAM_ATOL, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_step_with_grad_scaler_is_close_to_the_fp32_step(tiny_unet):
    """float16 autocast with nnU-Net's GradScaler on CUDA against the float32 step (same tolerances
    as the bfloat16 test; float16 has more mantissa bits, so they are looser than needed)."""
    start, _ = _pair(tiny_unet, device="cuda")
    fp32, amp = copy.deepcopy(start), copy.deepcopy(start)
    views = [v.float().cuda() for v in _views()]
    out32, _ = _step(fp32, views)
    out16, opt = _step(amp, views, autocast_dtype=torch.float16, grad_scaler=torch.amp.GradScaler("cuda"))
    assert all(g["fused"] for g in opt.param_groups)
    assert float(out16["loss"]) == pytest.approx(float(out32["loss"]), rel=5e-2)
    u32, u16 = _updates(start, fp32), _updates(start, amp)
    assert ((u16 - u32).abs() <= 0.1 * SCHEDULE.lr).float().mean() >= 0.75
    assert (u16 - u32).abs().max() <= 2 * SCHEDULE.lr + 1e-7


def test_trainer_compiles_the_encoders_where_nnunet_compiles(nnunet_env, monkeypatch):
    """nnU-Net's own rule decides (no override): off on the CPU even with nnUNet_compile set; where it
    says yes, both encoders are compiled and the checkpoint keys are those of the eager model."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ssl.desd.trainer import nnUNetTrainerDeSD
    from test_trainer import _trainer

    assert nnUNetTrainerDeSD._do_i_compile is nnUNetTrainer._do_i_compile
    monkeypatch.setenv("nnUNet_compile", "true")
    eager = _trainer(nnunet_env["root"], fold=0)
    eager.initialize()
    assert eager.network.student._compiled_pool is None and eager.network.teacher._compiled_pool is None
    monkeypatch.setattr(nnUNetTrainerDeSD, "_do_i_compile", lambda self: True)
    compiled = _trainer(nnunet_env["root"], fold=0)
    compiled.initialize()  # torch.compile is lazy: nothing is compiled before the first step
    assert compiled.network.student._compiled_pool is not None and compiled.network.teacher._compiled_pool is not None
    assert list(compiled.checkpoint_dict()["network_weights"]) == list(eager.network.state_dict())
