"""One DeSD step and RankMe on a fixed global batch; run by ``torchrun`` (each process takes its share of the
batch) or alone (the whole batch). Used by tests/test_torchrun.py; writes ``OUT/rank_R.pt``."""
import copy
import os
import sys

import torch


def main(out_dir: str) -> None:
    import torch.distributed as dist
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nnunet_ssl.desd.model import DeSDNetwork
    from nnunet_ssl.desd.monitor import teacher_rankme
    from nnunet_ssl.desd.settings import DeSDSettings
    from nnunet_ssl.desd.step import StepSchedule, make_optimizer, train_step
    from nnunet_ssl.distributed import ddp_device_ids

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)
    unet = PlainConvUNet(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], 1, 2, 1, True, torch.nn.InstanceNorm3d,
                         {"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    # no batch norm in the heads: on the CPU every process normalises its own share (SyncBatchNorm is CUDA-only)
    settings = DeSDSettings(out_dim=64, hidden_dim=16, bottleneck_dim=8, batch_size=4, view_size=(16, 16, 16),
                            view_sampling="region", clip_grad=0.05, use_bn_in_head=False)
    network = DeSDNetwork.from_settings(unet.encoder, settings).double()
    student = DDP(network.student, device_ids=ddp_device_ids(torch.device("cpu"))) if world > 1 else network.student
    optimizer = make_optimizer(network.student)
    g = torch.Generator().manual_seed(2)
    v1, v2 = (torch.randn(4, 1, 16, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    monitor = torch.randn(8, 1, 16, 16, 16, generator=g, dtype=torch.float64)
    share = slice(rank * 4 // world, (rank + 1) * 4 // world)
    schedule = StepSchedule(lr=1e-3, weight_decay=0.04, momentum=0.99, teacher_temp=0.04, freeze_last_layer=False)
    out = train_step(network, student, optimizer, v1[share], v2[share], settings, schedule)
    loss = out["loss"].clone()
    if world > 1:  # what the trainer logs: the mean over the processes
        dist.all_reduce(loss)
        loss /= world
    # the trainer's RankMe runs in float32 (its features are cast so); a float32 copy of the teacher does the same
    ranks = teacher_rankme(copy.deepcopy(network.teacher).float(),
                           [monitor[rank * 8 // world:(rank + 1) * 8 // world].float()], torch.device("cpu"))
    torch.save({"loss": loss, "center": network.center.clone(), "rankme": ranks, "world": world,
                "student": {k: v.clone() for k, v in network.student.state_dict().items()}},
               os.path.join(out_dir, f"rank_{rank}.pt"))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
