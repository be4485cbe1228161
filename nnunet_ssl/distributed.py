"""SSL pretraining under an existing launcher (``torchrun``, ``srun`` + ``torchrun``), on any number of nodes.

nnU-Net's ``-num_gpus N`` starts N processes on one machine with CUDA, and its trainer takes the
process's global rank as its GPU index. Under ``torchrun`` the launcher starts the processes and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`run_pretraining` joins the process group from them (``env://``; NCCL on CUDA, gloo on the
CPU), and the SSL trainers put each process on GPU ``LOCAL_RANK`` of its node
(:func:`process_device`) and give DDP that device (:func:`ddp_device_ids`). Everything else is
nnU-Net's DDP: the global ``batch_size`` split over the processes, rank 0 writing logs and
checkpoints, losses averaged over the processes; the SSL pieces that need all samples gather them
across processes (DeSD's centre, RankMe, the contrastive losses).

Example (two nodes of four GPUs, run on each node):
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m nnunet_ssl.cli.main pretrain 500 3d_fullres all -tr nnUNetTrainerDeSD
"""
from __future__ import annotations

import os
from typing import Optional

import torch


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def process_device(requested: torch.device) -> torch.device:
    """The device of this process: ``requested`` outside ``torch.distributed``; under it GPU
    ``LOCAL_RANK`` (the process's index on its node) for CUDA, the CPU otherwise.

    Example:
        >>> process_device(torch.device("cpu"))
        device(type='cpu')
    """
    if not _initialized():
        return requested
    if requested.type == "cuda":
        import torch.distributed as dist

        local = os.environ.get("LOCAL_RANK")
        return torch.device("cuda", int(local) if local is not None else dist.get_rank() % torch.cuda.device_count())
    return torch.device(requested.type)


def ddp_device_ids(device: torch.device) -> Optional[list[int]]:
    """``device_ids`` for ``DistributedDataParallel``: the GPU's index, ``None`` for a CPU module."""
    return [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None


def sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Batch norm with statistics over all processes (``SyncBatchNorm``) on GPUs; PyTorch has it for
    CUDA only, so on the CPU (gloo) each process normalises with its own share of the batch."""
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module) if device.type == "cuda" else module


def place_process(trainer, requested: torch.device) -> None:
    """Under ``torch.distributed``: move an nnU-Net trainer (after its ``__init__``) to :func:`process_device`
    and drop the CUDA gradient scaler nnU-Net made for it where that is not a GPU."""
    if not getattr(trainer, "is_ddp", False):
        return
    trainer.device = process_device(requested)
    if trainer.device.type != "cuda":
        trainer.grad_scaler = None


def run_pretraining(dataset: str, configuration: str, fold: str, trainer: str, plans: str = "nnUNetPlans",
                    continue_training: bool = False, device: str = "cuda") -> None:
    """Train ``trainer`` as ``nnUNetv2_train`` does, in this process; under ``torchrun`` (``WORLD_SIZE`` > 1)
    as one process of the launcher's process group."""
    import torch.distributed as dist
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    world = int(os.environ.get("WORLD_SIZE", "1"))
    requested = torch.device(device)
    joined = False
    if world > 1 and not _initialized():
        if requested.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if requested.type == "cuda" else "gloo", init_method="env://")
        joined = True
    try:
        if fold != "all":
            fold = int(fold)
        t = get_trainer_from_args(dataset, configuration, fold, trainer, plans, device=requested)
        if world > 1 and not getattr(t, "SUPPORTS_LAUNCHER", False):
            from nnunet_ssl.errors import UserError

            raise UserError(f"{trainer} is not an nnunet-ssl SSL trainer; under torchrun start it with "
                            "nnU-Net's own `nnUNetv2_train -num_gpus N` (one machine)")
        maybe_load_checkpoint(t, continue_training, False, None)
        if requested.type == "cuda":  # as nnUNetv2_train
            torch.backends.cudnn.deterministic = False
            torch.backends.cudnn.benchmark = True
        t.run_training()
    finally:
        if joined:
            dist.barrier()
            dist.destroy_process_group()
