"""Freezing under DistributedDataParallel: 2 processes (gloo, CPU), DDP rebuilt when the trainable set changes."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, out_dir):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnunet_ssl.finetune.freezing import apply_frozen_stages, rewrap_ddp, split_parameters

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        net = PlainConvUNet(1, 2, [4, 8], torch.nn.Conv3d, 3, [1, 2], 1, 2, 1, True, torch.nn.InstanceNorm3d,
                            {"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU)
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
        encoder, rest = split_parameters(ddp)
        x = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(rank))  # each rank its own data

        def step():
            opt.zero_grad(set_to_none=True)
            ddp(x).square().mean().backward()
            opt.step()

        enc0 = [p.detach().clone() for p in encoder]
        if apply_frozen_stages(ddp, [True, True], opt):
            ddp = rewrap_ddp(ddp)
        for _ in range(2):
            step()
        frozen_kept = all(torch.equal(a, b) for a, b in zip(enc0, encoder))
        if apply_frozen_stages(ddp, [False, False], opt):
            ddp = rewrap_ddp(ddp)
        for _ in range(2):
            step()
        torch.save({"frozen_kept": frozen_kept, "params": [p.detach() for p in net.parameters()]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_freeze_and_unfreeze_under_ddp_keep_ranks_in_sync(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["frozen_kept"] and r1["frozen_kept"]
    # gradients of the unfrozen encoder were all-reduced: both ranks hold the same weights
    assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))
