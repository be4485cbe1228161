"""The centre update under torch.distributed: 2 processes (gloo, CPU) equal one process."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_ssl.desd.loss import update_center


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, logits, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        half = logits.shape[1] // world_size
        center = torch.full((1, logits.shape[-1]), 0.5)
        update_center(center, logits[:, rank * half:(rank + 1) * half], 0.9)
        torch.save(center, os.path.join(out_dir, f"center_{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_center_all_reduce_matches_single_process(tmp_path):
    logits = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(0))  # views x batch x K
    mp.spawn(_worker, args=(2, _free_port(), logits, str(tmp_path)), nprocs=2, join=True)
    single = torch.full((1, 16), 0.5)
    update_center(single, logits, 0.9)
    for rank in range(2):
        got = torch.load(tmp_path / f"center_{rank}.pt")
        torch.testing.assert_close(got, single)
    # and each process alone would have got something else
    alone = torch.full((1, 16), 0.5)
    update_center(alone, logits[:, :3], 0.9)
    assert not torch.allclose(alone, single)
