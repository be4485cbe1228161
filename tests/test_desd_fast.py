"""The DeSD step against plain, obviously correct reference implementations.

The references are written as the maths reads: ``F.normalize`` on the last layer's weight,
a Python loop over the heads, pooling by ``mean`` after the encoder, the loss as loops over heads and view pairs
(``test_desd_math._reference_loss``), DINO's per-parameter gradient clipping as a loop and
PyTorch's for-loop AdamW on dense gradients. Comparisons run in float64. Biases followed by
batch or instance norm have a true gradient of 0, so AdamW turns their rounding noise into
steps of up to the learning rate in either direction: after optimiser steps, parameters are
compared to ``PARAM_ATOL`` (far below the 1e-3 learning rate), optimiser moments tightly.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from nnunet_ssl.desd import step as step_module
from nnunet_ssl.desd.heads import ProjectionHead
from nnunet_ssl.desd.model import DeSDNetwork, ema_update
from nnunet_ssl.desd.settings import DeSDSettings
from nnunet_ssl.desd.step import StepSchedule, clip_per_parameter_, make_optimizer, train_step
from test_desd_math import _reference_loss

F64 = torch.float64
PARAM_ATOL = 1e-6


def _reference_head(head: ProjectionHead, x: torch.Tensor) -> torch.Tensor:
    for layer in head.mlp:  # plain F.linear for the linear layers, the modules themselves otherwise
        x = F.linear(x, layer.weight, layer.bias) if isinstance(layer, torch.nn.Linear) else layer(x)
    return F.linear(F.normalize(x, dim=-1), F.normalize(head.last_layer.weight, dim=1))


def _reference_clip(params, clip):
    """DINO's utils.clip_gradients."""
    for p in params:
        if p.grad is not None:
            clip_coef = clip / (p.grad.norm(2) + 1e-6)
            if clip_coef < 1:
                p.grad.mul_(clip_coef)


def _reference_step(net, optimizer, v1, v2, settings, schedule):
    """One DeSD step written plainly: loop over heads, dense gradients, clip, AdamW, EMA, centre."""
    for group in optimizer.param_groups:
        group["lr"] = schedule.lr
        group["weight_decay"] = schedule.weight_decay if group["regularized"] else 0.0
    optimizer.zero_grad(set_to_none=True)
    b, x = v1.shape[0], torch.cat([v1, v2])
    stages = net.student.encoder(x)
    student = torch.stack([_reference_head(h, f.flatten(2).mean(2)) for h, f in zip(net.student.heads, stages)])
    with torch.no_grad():
        teacher = _reference_head(net.teacher.head, net.teacher.encoder(x).flatten(2).mean(2))
    k = student.shape[-1]
    weights = settings.head_weights or [1.0] * len(net.student.heads)
    loss = _reference_loss(student.view(-1, 2, b, k), teacher.view(2, b, k), net.center, settings.student_temp,
                           schedule.teacher_temp, weights)
    loss.backward()
    if schedule.freeze_last_layer:
        for h in net.student.heads:
            h.last_layer.weight.grad = None
    _reference_clip(net.student.parameters(), settings.clip_grad)
    optimizer.step()
    with torch.no_grad():
        for t, s in zip(*net.teacher_pairs()):
            t.copy_(schedule.momentum * t + (1 - schedule.momentum) * s)
        mean = teacher.reshape(-1, k).mean(0, keepdim=True)
        net.center.copy_(settings.center_momentum * net.center + (1 - settings.center_momentum) * mean)
    return loss


def _network(tiny_unet, shared=False, out_dim=64):
    torch.manual_seed(1)
    enc = tiny_unet.encoder
    return DeSDNetwork(enc, enc.output_channels, out_dim=out_dim, hidden_dim=16, bottleneck_dim=8,
                       shared_last_layer=shared).to(F64)


def _settings(**changes):
    base = dict(out_dim=64, hidden_dim=16, bottleneck_dim=8, batch_size=2, view_size=(16, 16, 16),
                view_sampling="region", clip_grad=0.05)  # small enough that clipping acts
    base.update(changes)
    return DeSDSettings(**base)


def _views():
    g = torch.Generator().manual_seed(2)
    return [torch.randn(2, 1, 16, 16, 16, generator=g, dtype=F64) for _ in range(2)]


# ------------------------------------------------------------------------------------------ heads
def test_last_layer_equals_normalise_then_linear_forward_and_gradients():
    """Outputs divided by the row norms against ``F.linear(z, F.normalize(V, dim=1))``, with a zero row
    (its norm clamped, as F.normalize does)."""
    g = torch.Generator().manual_seed(0)
    head = ProjectionHead(4, out_dim=32, hidden_dim=8, bottleneck_dim=8).to(F64)
    with torch.no_grad():
        head.last_layer.weight.copy_(torch.randn(32, 8, generator=g, dtype=F64))
        head.last_layer.weight[3] = 0.0
    v = head.last_layer.weight.detach().clone().requires_grad_(True)
    z = torch.randn(5, 8, generator=g, dtype=F64, requires_grad=True)
    z2 = z.detach().clone().requires_grad_(True)
    upstream = torch.randn(5, 32, generator=g, dtype=F64)
    got, want = head.prototypes(z), F.linear(z2, F.normalize(v, dim=1))
    torch.testing.assert_close(got, want)
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    torch.testing.assert_close(head.last_layer.weight.grad, v.grad)


def test_heads_equal_plain_head_loop_forward_and_gradients(tiny_unet):
    net = _network(tiny_unet)
    ref = copy.deepcopy(net)
    x = _views()[0]
    upstream = torch.randn(len(net.student.heads), 2, 64, generator=torch.Generator().manual_seed(4), dtype=F64)
    got = net.student(x)
    stages = ref.student.encoder(x)
    want = torch.stack([_reference_head(h, f.flatten(2).mean(2)) for h, f in zip(ref.student.heads, stages)])
    torch.testing.assert_close(got, want)
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    for (name, a), b in zip(net.student.named_parameters(), ref.student.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    torch.testing.assert_close(net.teacher(x), _reference_head(ref.teacher.head, ref.teacher.encoder(x).flatten(2).mean(2)))


def test_stages_are_pooled_in_the_encoder_forward_or_afterwards(tiny_unet):
    net = _network(tiny_unet)
    x = _views()[0]
    stages = net.student.encoder(x)
    want = [f.flatten(2).mean(2) for f in stages]
    for got, w in zip(net.student.pooled_stages(x), want):
        torch.testing.assert_close(got, w)
    assert not net.student.encoder.stages[0]._forward_hooks  # the hooks are removed again

    class Copying(torch.nn.Module):  # returns copies, not the stages' own outputs: pooled afterwards
        def __init__(self, encoder):
            super().__init__()
            self.stages, self.inner = encoder.stages, encoder

        def forward(self, x):
            return [f.clone() for f in self.inner(x)]

    net.student.encoder = Copying(net.student.encoder)
    for got, w in zip(net.student.pooled_stages(x), want):
        torch.testing.assert_close(got, w)


def test_shared_last_layer_is_one_parameter_and_equals_the_loop(tiny_unet):
    net = _network(tiny_unet, shared=True)
    heads = net.student.heads
    assert net.student.shares_last_layer and all(h.last_layer.weight is heads[0].last_layer.weight for h in heads)
    n_params = sum(p.numel() for p in net.student.parameters())
    assert n_params == sum(p.numel() for p in _network(tiny_unet).student.parameters()) - 2 * 64 * 8
    keys = net.state_dict().keys()
    assert {f"student.heads.{i}.last_layer.weight" for i in range(3)} <= set(keys)
    assert net.teacher.head.last_layer.weight is not heads[-1].last_layer.weight
    x = _views()[0]
    ref = copy.deepcopy(net)
    got = net.student(x)
    stages = ref.student.encoder(x)
    want = torch.stack([_reference_head(h, f.flatten(2).mean(2)) for h, f in zip(ref.student.heads, stages)])
    torch.testing.assert_close(got, want)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(heads[0].last_layer.weight.grad, ref.student.heads[0].last_layer.weight.grad)


# ------------------------------------------------------------------------------- optimiser step
def test_per_parameter_clipping_equals_dino_loop():
    g = torch.Generator().manual_seed(5)
    ps = [torch.zeros(3, 4, requires_grad=True) for _ in range(4)]
    for i, p in enumerate(ps):
        p.grad = torch.randn(3, 4, generator=g) * (0.1 if i % 2 else 10.0)
    qs = [p.detach().clone().requires_grad_(True) for p in ps]
    for p, q in zip(ps, qs):
        q.grad = p.grad.clone()
    clip_per_parameter_(ps, 1.0)
    _reference_clip(qs, 1.0)
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.grad, q.grad)
    assert ps[1].grad.norm() < 1.0 and ps[0].grad.norm() == pytest.approx(1.0, rel=1e-5)


def test_make_optimizer_is_fused_adamw_with_dino_groups():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = make_optimizer(net)
    assert isinstance(opt, torch.optim.AdamW) and all(g["fused"] for g in opt.param_groups)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]


def test_make_optimizer_falls_back_to_foreach_where_fused_is_refused(monkeypatch):
    class NoFusedAdamW(torch.optim.AdamW):  # as PyTorch before 2.4 for CPU parameters
        def __init__(self, params, **kwargs):
            if kwargs.get("fused"):
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                   "supported devices: ['cuda']")
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", NoFusedAdamW)
    opt = make_optimizer(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)))
    assert isinstance(opt, NoFusedAdamW)
    assert all(g["foreach"] and not g["fused"] for g in opt.param_groups)
    assert [g["regularized"] for g in opt.param_groups] == [True, False]


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("freeze", [False, True])
def test_train_step_equals_plain_reference_step(tiny_unet, shared, freeze):
    settings = _settings(head_weights=(0.2, 0.3, 0.5))
    net = _network(tiny_unet, shared=shared)
    ref = copy.deepcopy(net)
    opt = make_optimizer(net.student)
    ref_opt = torch.optim.AdamW(step_module.parameter_groups(ref.student), foreach=False)
    last_before = net.student.heads[0].last_layer.weight.detach().clone()
    for i in range(3):
        schedule = StepSchedule(lr=1e-3 * (i + 1), weight_decay=0.04, momentum=0.99, teacher_temp=0.04,
                                freeze_last_layer=freeze)
        v1, v2 = _views()
        out = train_step(net, net.student, opt, v1, v2, settings, schedule)
        want = _reference_step(ref, ref_opt, v1, v2, settings, schedule)
        torch.testing.assert_close(out["loss"], want.detach())
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=PARAM_ATOL, msg=name)
    for p, q in zip(net.student.parameters(), ref.student.parameters()):
        for key, value in ref_opt.state[q].items():
            torch.testing.assert_close(opt.state[p][key], value)
    assert freeze == torch.equal(net.student.heads[0].last_layer.weight, last_before)
    if freeze:
        assert net.student.heads[0].last_layer.weight not in opt.state


def test_train_step_with_ddp_student_equals_the_unwrapped_step(tiny_unet, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    settings = _settings()
    a = _network(tiny_unet)
    b = copy.deepcopy(a)
    opt_a, opt_b = make_optimizer(a.student), make_optimizer(b.student)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DDP(b.student)
        for i in range(2):
            schedule = StepSchedule(lr=1e-3, weight_decay=0.04, momentum=0.99, teacher_temp=0.04,
                                    freeze_last_layer=i == 0)
            v1, v2 = _views()
            train_step(a, a.student, opt_a, v1, v2, settings, schedule)
            train_step(b, wrapped, opt_b, v1, v2, settings, schedule)
    finally:
        dist.destroy_process_group()
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=PARAM_ATOL, msg=name)


def test_ema_update_equals_per_parameter_loop_on_the_network(tiny_unet):
    net = _network(tiny_unet)
    with torch.no_grad():
        for p in net.student.parameters():
            p.add_(1.0)
    t, s = net.teacher_pairs()
    want = [0.9 * a + 0.1 * b for a, b in zip(t, s)]
    ema_update(t, s, 0.9)
    for a, b in zip(t, want):
        torch.testing.assert_close(a, b)
