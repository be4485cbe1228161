"""Contrastive methods' maths (SimCLR, MoCo, CM-UNet): losses against loop references, the queue, views."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_ssl.ssl.contrastive import (
    FeatureQueue, MomentumBranch, PooledHeadNetwork, gather, info_nce, momentum_update, nt_xent, projection_head,
    random_view, two_views)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


# ------------------------------------------------------------------------ losses
def test_nt_xent_equals_a_loop_over_anchors():
    z1, z2 = torch.randn(3, 5, generator=_gen(1)), torch.randn(3, 5, generator=_gen(2))
    t = 0.3
    rows = [_unit(r) for r in torch.cat([z1, z2]).tolist()]
    n = 3
    total, correct = 0.0, 0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        others = [j for j in range(2 * n) if j != i]
        scores = {j: _dot(rows[i], rows[j]) / t for j in others}
        total += -scores[partner] + math.log(sum(math.exp(s) for s in scores.values()))
        correct += max(scores, key=scores.get) == partner
    loss, got_correct = nt_xent(z1, z2, t)
    assert loss.item() == pytest.approx(total / (2 * n), rel=1e-5)
    assert int(got_correct) == correct
    # identical views of orthogonal embeddings: every anchor finds its partner, loss near its minimum
    perfect, hits = nt_xent(torch.eye(4), torch.eye(4), 0.05)
    assert int(hits) == 8 and perfect.item() < 1e-6


def test_info_nce_with_a_queue_and_with_batch_negatives_equals_loops():
    q, k = torch.randn(4, 6, generator=_gen(3)), torch.randn(4, 6, generator=_gen(4))
    queue = torch.randn(7, 6, generator=_gen(5))
    t = 0.2
    Q, K, N = [[_unit(r) for r in x.tolist()] for x in (q, k, queue)]
    # MoCo: positive first, then the queue
    expected = 0.0
    for i in range(4):
        logits = [_dot(Q[i], K[i]) / t] + [_dot(Q[i], n) / t for n in N]
        expected += -logits[0] + math.log(sum(math.exp(s) for s in logits))
    loss, _ = info_nce(q, k, queue, t)
    assert loss.item() == pytest.approx(expected / 4, rel=1e-5)
    # batch negatives, queries of process 1 of 2 against every process's keys
    keys = torch.cat([torch.randn(4, 6, generator=_gen(6)), k])
    KK = [_unit(r) for r in keys.tolist()]
    expected, hits = 0.0, 0
    for i in range(4):
        logits = [_dot(Q[i], kk) / t for kk in KK]
        expected += -logits[4 + i] + math.log(sum(math.exp(s) for s in logits))
        hits += max(range(8), key=lambda j: logits[j]) == 4 + i
    loss, correct = info_nce(q, keys, None, t, offset=4)
    assert loss.item() == pytest.approx(expected / 4, rel=1e-5) and int(correct) == hits
    # the positive is the key itself: a query equal to its key beats random negatives
    _, found = info_nce(k, k, queue, 0.1)
    assert int(found) == 4


# ------------------------------------------------------------------------ the queue
def test_queue_is_first_in_first_out_and_wraps():
    queue = FeatureQueue(5, 2, _gen(0))
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(5))  # random unit vectors to start
    batches = [torch.full((2, 2), float(v)) + torch.tensor([[0.0, 0.0], [0.5, 0.5]]) for v in (1, 2, 3, 4)]
    pushed = []
    for b in batches:
        queue.push(b)
        pushed.extend(b[:, 0].tolist())
    # 8 keys through a queue of 5: the last 5, oldest first; the write position has wrapped to 8 % 5
    assert queue.ordered()[:, 0].tolist() == pushed[-5:] and int(queue.pointer) == 3
    assert queue.keys[:, 0].tolist() == [pushed[5], pushed[6], pushed[7], pushed[3], pushed[4]]
    # more keys than the queue holds: only the newest stay
    queue.push(torch.arange(14, dtype=torch.float32).view(7, 2))
    assert queue.ordered()[:, 0].tolist() == [4.0, 6.0, 8.0, 10.0, 12.0]
    # the state goes into the state dict (checkpoint, resume)
    fresh = FeatureQueue(5, 2)
    fresh.load_state_dict(queue.state_dict())
    assert torch.equal(fresh.ordered(), queue.ordered())


def test_momentum_update_is_the_moving_average():
    target = [torch.tensor([0.0, 4.0]), torch.tensor([[1.0]])]
    online = [torch.tensor([2.0, 0.0], requires_grad=True), torch.tensor([[3.0]])]
    momentum_update(target, online, 0.75)
    assert target[0].tolist() == [0.5, 3.0] and target[1].item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="differ in length"):
        momentum_update(target, online[:1], 0.5)


# ------------------------------------------------------------------------ views
def test_views_are_reproducible_and_leave_the_batch_alone():
    data = torch.randn(2, 2, 8, 12, 12, generator=_gen(7))
    before = data.clone()
    a1, a2 = two_views(data, _gen(11))
    b1, b2 = two_views(data, _gen(11))
    assert torch.equal(data, before) and a1.shape == a2.shape == data.shape
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and not torch.equal(a1, a2)
    # with every random part switched off a view is the patch itself
    same = random_view(data[0], _gen(0), min_scale=1.0, flip=False, intensity=0.0, noise=0.0)
    assert torch.equal(same, data[0])
    # flips only: the view is the patch flipped along some spatial axes, never along the channels
    flipped = random_view(data[0], _gen(3), min_scale=1.0, flip=True, intensity=0.0, noise=0.0)
    candidates = [data[0].flip(axes) if axes else data[0]
                  for axes in ([], [1], [2], [3], [1, 2], [1, 3], [2, 3], [1, 2, 3])]
    assert any(torch.equal(flipped, c) for c in candidates)
    # intensity only: an affine map of the voxel values with scale and shift in the given range
    scaled = random_view(data[0], _gen(5), min_scale=1.0, flip=False, intensity=0.2, noise=0.0)
    a, b = torch.linalg.lstsq(torch.stack([data[0].flatten(), torch.ones(data[0].numel())], 1),
                              scaled.flatten()[:, None]).solution.flatten().tolist()
    assert 0.8 <= a <= 1.2 and -0.2 <= b <= 0.2 and torch.allclose(scaled, a * data[0] + b, atol=1e-5)
    # a crop: a smaller box of the patch, resized back to the patch
    cropped = random_view(data[0], _gen(9), min_scale=0.5, flip=False, intensity=0.0, noise=0.0)
    assert cropped.shape == data[0].shape and not torch.equal(cropped, data[0])


# ------------------------------------------------------------------------ networks
def test_pooled_head_network_keeps_the_unet_keys_and_the_momentum_branch_is_frozen(tiny_unet):
    keys = set(tiny_unet.state_dict())
    net = PooledHeadNetwork(tiny_unet, projection_head(16, 32, 8))
    assert set(net.state_dict()) == keys | {"head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"}
    out = net(torch.randn(2, 1, 8, 16, 16))
    assert out.shape == (2, 8)
    out.sum().backward()
    trained = {n for n, p in net.named_parameters() if p.grad is not None}
    assert trained and all(n.startswith(("encoder.", "head.")) for n in trained)
    branch = MomentumBranch(net.encoder, net.head)
    assert not any(p.requires_grad for p in branch.parameters())
    x = torch.randn(2, 1, 8, 16, 16)
    assert torch.allclose(branch(x), net(x).detach())  # a copy to start
    with torch.no_grad():
        for p in net.head.parameters():
            p.add_(1.0)
    branch.update(net.encoder, net.head, 0.5)
    for (name, p), q in zip(branch.head.named_parameters(), net.head.parameters()):
        assert torch.allclose(p, q - 0.5), name  # half-way towards the online head


# ------------------------------------------------------------------------ two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, z1, z2, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        n = z1.shape[0] // world_size
        a = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        b = z2[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        g1, offset = gather(a, differentiable=True)
        g2, _ = gather(b, differentiable=True)
        loss, _ = nt_xent(g1, g2, 0.5)
        loss.backward()
        keys, _ = gather(b.detach())
        torch.save({"loss": loss.detach(), "grad": a.grad / world_size, "offset": offset, "keys": keys},
                   os.path.join(out_dir, f"rank_{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_simclr_loss_and_gradient_equal_one_process_on_the_global_batch(tmp_path):
    z1, z2 = torch.randn(4, 6, generator=_gen(8)), torch.randn(4, 6, generator=_gen(9))
    mp.spawn(_worker, args=(2, _free_port(), z1, z2, str(tmp_path)), nprocs=2, join=True)
    a = z1.clone().requires_grad_(True)
    loss, _ = nt_xent(a, z2, 0.5)
    loss.backward()
    assert gather(z1) == (z1, 0)  # outside torch.distributed: itself
    for rank in range(2):
        got = torch.load(tmp_path / f"rank_{rank}.pt")
        assert got["offset"] == 2 * rank and torch.equal(got["keys"], z2)
        torch.testing.assert_close(got["loss"], loss.detach())
        # DDP averages the processes' gradients: that average is the global loss's gradient
        torch.testing.assert_close(got["grad"], a.grad[2 * rank:2 * rank + 2])


# ------------------------------------------------------------------------ settings
def test_contrastive_settings_are_validated_by_name():
    from nnunet_ssl.ssl.cmunet.settings import CMUNetSettings
    from nnunet_ssl.ssl.moco.settings import MoCoSettings
    from nnunet_ssl.ssl.simclr.settings import SimCLRSettings

    s = MoCoSettings.from_dict({"queue_size": 64.0, "min_scale": 1})
    assert (s.queue_size, s.min_scale, s.temperature, s.momentum) == (64, 1.0, 0.2, 0.99)
    assert s.view_settings() == {"min_scale": 1.0, "flip": True, "intensity": 0.1, "noise": 0.1}
    for cls, name, bad, says in [(SimCLRSettings, "temperature", 0, "a positive number"),
                                 (SimCLRSettings, "min_scale", 0, "a number above 0 and at most 1"),
                                 (SimCLRSettings, "noise", -0.1, "a number of at least 0"),
                                 (SimCLRSettings, "flip", 1, "true or false"),
                                 (MoCoSettings, "queue_size", 0, "a positive integer"),
                                 (MoCoSettings, "momentum", 1.0, "a number between 0 and 1"),
                                 (CMUNetSettings, "contrastive_weight", -1, "a positive number"),
                                 (CMUNetSettings, "mask_ratio", 1.5, "a number between 0 and 1")]:
        with pytest.raises(ValueError, match=f"{cls.BLOCK} setting '{name}' must be {says}"):
            cls.from_dict({name: bad})
    with pytest.raises(ValueError, match=r"unknown ssl_simclr setting\(s\) \['queue_size'\]"):
        SimCLRSettings.from_dict({"queue_size": 8})
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert CMUNetSettings().block_for([16, 32, 32], strides) == (4, 4, 4)
    with pytest.raises(ValueError, match="ssl_cmunet block_size \\[3, 3, 3\\] does not tile"):
        CMUNetSettings.from_dict({"block_size": 3}).block_for([16, 32, 32], strides)
