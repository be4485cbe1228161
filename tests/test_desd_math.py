"""DeSD maths against hand-computed values and plain reference implementations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_ssl.desd.heads import ProjectionHead
from nnunet_ssl.desd.loss import desd_loss, mean_entropy, update_center
from nnunet_ssl.desd.model import DeSDNetwork, ema_update
from nnunet_ssl.desd.schedules import cosine_schedule, teacher_temperature_schedule


def _logits(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_loss_on_tiny_example_matches_hand_computation():
    # one head, two views, batch 1, K = 2; temperatures 1 so softmax is easy by hand
    teacher = _logits([0.0, 0.0], [math.log(3), 0.0]).view(2, 1, 2)  # q1 = (.5, .5), q2 = (.75, .25)
    student = _logits([0.0, 0.0], [math.log(3), 0.0]).view(1, 2, 1, 2)  # p1 = (.5, .5), p2 = (.75, .25)
    loss = desd_loss(student, teacher, torch.zeros(2), 1.0, 1.0)
    h_q1_p2 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    h_q2_p1 = -(0.75 * math.log(0.5) + 0.25 * math.log(0.5))
    assert float(loss) == pytest.approx((h_q1_p2 + h_q2_p1) / 2, rel=1e-6)


def test_loss_weights_heads_and_uses_center_and_temperatures():
    teacher = _logits([0.0, 0.0], [math.log(3), 0.0]).view(2, 1, 2)
    s1 = _logits([0.0, 0.0], [math.log(3), 0.0]).view(1, 2, 1, 2)
    s2 = torch.zeros(1, 2, 1, 2, dtype=torch.float64)  # uniform student: every term is ln 2
    student = torch.cat([s1, s2])
    l1 = float(desd_loss(s1, teacher, torch.zeros(2), 1.0, 1.0))
    weighted = desd_loss(student, teacher, torch.zeros(2), 1.0, 1.0, head_weights=[1.0, 3.0])
    assert float(weighted) == pytest.approx((l1 + 3 * math.log(2)) / 4, rel=1e-6)
    # centring the teacher by its second view's logits makes q2 uniform: H(q2, p1) = ln 2 either way,
    # H(q1', p2) with q1' = softmax((0,0) - (ln3, 0)) = (.25, .75)
    center = torch.tensor([math.log(3), 0.0], dtype=torch.float64)
    got = desd_loss(s1, teacher, center, 1.0, 1.0)
    h = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert float(got) == pytest.approx((h + math.log(2)) / 2, rel=1e-6)
    # temperatures divide the logits: T = 0.5 on logits x equals T = 1 on 2x
    a = desd_loss(s1, teacher, torch.zeros(2), 0.5, 0.5)
    b = desd_loss(2 * s1, 2 * teacher, torch.zeros(2), 1.0, 1.0)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def _reference_loss(student, teacher, center, ts, tt, weights):
    """Loops over heads and view pairs, as the paper's equation (3) reads."""
    n_heads, n_views = student.shape[:2]
    total = 0.0
    for h in range(n_heads):
        terms = []
        for v in range(n_views):
            q = F.softmax((teacher[v] - center) / tt, dim=-1)
            for w in range(n_views):
                if w != v:
                    terms.append(torch.sum(-q * F.log_softmax(student[h, w] / ts, dim=-1), dim=-1).mean())
        total = total + weights[h] * sum(terms) / len(terms)
    return total / sum(weights)


@pytest.mark.parametrize("n_views", [2, 3])
def test_batched_loss_equals_loop_reference(n_views):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, n_views, 5, 64, generator=g, dtype=torch.float64)
    teacher = torch.randn(n_views, 5, 64, generator=g, dtype=torch.float64)
    center = torch.randn(1, 64, generator=g, dtype=torch.float64) * 0.1
    weights = [0.1, 0.2, 0.3, 0.4]
    got = desd_loss(student, teacher, center, 0.1, 0.04, weights)
    want = _reference_loss(student, teacher, center, 0.1, 0.04, weights)
    assert float(got) == pytest.approx(float(want), rel=1e-9)


def test_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least two views"):
        desd_loss(torch.zeros(1, 1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(4), 0.1, 0.04)
    with pytest.raises(ValueError, match="head weights"):
        desd_loss(torch.zeros(2, 2, 1, 4), torch.zeros(2, 1, 4), torch.zeros(4), 0.1, 0.04, [1.0])


def test_center_update_by_hand():
    center = torch.tensor([[1.0, 2.0]])
    logits = torch.tensor([[[0.0, 4.0]], [[2.0, 0.0]]])  # 2 views x batch 1
    update_center(center, logits, 0.9)
    # batch mean = (1, 2); c = 0.9 * (1, 2) + 0.1 * (1, 2) = (1, 2)
    assert center.tolist()[0] == pytest.approx([1.0, 2.0])
    update_center(center, torch.tensor([[11.0, 12.0]]), 0.9)
    assert center.tolist()[0] == pytest.approx([0.9 * 1 + 1.1, 0.9 * 2 + 1.2])
    update_center(center, torch.tensor([[5.0, -5.0]]), 0.0)  # momentum 0 copies the batch mean
    assert center.tolist()[0] == pytest.approx([5.0, -5.0])


def test_ema_update_limits_and_value():
    t = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    s = [torch.tensor([5.0, 6.0]), torch.tensor([[7.0]])]
    before = [x.clone() for x in t]
    ema_update(t, s, 1.0)  # momentum 1 changes nothing
    assert all(torch.equal(a, b) for a, b in zip(t, before))
    ema_update(t, s, 0.5)
    assert t[0].tolist() == [3.0, 4.0] and t[1].tolist() == [[5.0]]
    ema_update(t, s, 0.0)  # momentum 0 copies the student
    assert all(torch.equal(a, b) for a, b in zip(t, s))


def test_ema_update_equals_per_parameter_loop():
    g = torch.Generator().manual_seed(1)
    t = [torch.randn(3, 4, generator=g) for _ in range(5)]
    s = [torch.randn(3, 4, generator=g) for _ in range(5)]
    want = [0.9996 * a + (1 - 0.9996) * b for a, b in zip(t, s)]
    ema_update(t, s, 0.9996)
    for a, b in zip(t, want):
        torch.testing.assert_close(a, b)


def test_cosine_schedule_endpoints_and_warmup():
    s = cosine_schedule(1.0, 0.1, epochs=4, iterations_per_epoch=5, warmup_epochs=2, warmup_start=0.0)
    assert len(s) == 20
    assert s[0] == 0.0 and s[9] == pytest.approx(1.0)  # linear warm-up over 10 iterations
    assert np.allclose(np.diff(s[:10]), 1 / 9)
    assert s[10] == pytest.approx(1.0) and s[-1] == pytest.approx(0.1)
    mid = 10 + 4.5  # cosine halfway lies halfway between base and final
    assert np.interp(mid, np.arange(20), s) == pytest.approx(0.55, abs=1e-9)
    momentum = cosine_schedule(0.9996, 1.0, 3, 4)
    assert momentum[0] == pytest.approx(0.9996) and momentum[-1] == pytest.approx(1.0)
    assert np.all(np.diff(momentum) >= 0)


def test_teacher_temperature_schedule():
    t = teacher_temperature_schedule(0.04, 0.07, 10, 12)
    assert len(t) == 12 and t[0] == pytest.approx(0.04) and t[9] == pytest.approx(0.07)
    assert t[10] == t[11] == pytest.approx(0.07)
    assert t[1] == pytest.approx(0.04 + 0.03 / 9)


def test_head_is_weight_normalised_and_shapes_per_stage(tiny_unet):
    head = ProjectionHead(8, out_dim=32, hidden_dim=16, bottleneck_dim=4, use_bn=False)
    with torch.no_grad():
        head.last_layer.weight.mul_(7.0)  # scaling the directions must not change the output
    x = torch.randn(3, 8)
    out1 = head(x)
    with torch.no_grad():
        head.last_layer.weight.div_(7.0)
    torch.testing.assert_close(out1, head(x))
    assert out1.abs().max() <= 1.0 + 1e-6  # unit-norm embedding times unit-norm rows

    stages = tiny_unet.encoder.output_channels
    net = DeSDNetwork(tiny_unet.encoder, stages, out_dim=32, hidden_dim=16, bottleneck_dim=4)
    x = torch.randn(2, 1, 16, 16, 16)
    s = net.student(x)
    assert s.shape == (len(stages), 2, 32)
    assert [h.mlp[0].in_features for h in net.student.heads] == list(stages)
    assert net.teacher(x).shape == (2, 32)
    assert not any(p.requires_grad for p in net.teacher.parameters())
    # the teacher starts as a copy of the student encoder and last head
    t, st = net.teacher_pairs()
    assert all(torch.equal(a, b) for a, b in zip(t, st))


def test_mean_entropy():
    assert mean_entropy(torch.full((3, 4), 0.25)) == pytest.approx(math.log(4))
    assert mean_entropy(torch.tensor([[1.0, 0.0]])) == pytest.approx(0.0, abs=1e-9)
