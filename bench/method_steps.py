"""Time of one training step of every SSL method, against nnU-Net's own segmentation step.

Every trainer is built the way ``nnUNetv2_train`` builds it, on one phantom dataset planned with
the label-efficiency benchmark's U-Net (``--base-features``, default 8), and its own
``train_step`` runs on batches of its own data loader: the method's views or corruption, forward,
loss, backward, optimiser step and whatever it does after a step (EMA, queue). The reference is
nnU-Net's ``nnUNetTrainer.train_step`` on the same dataset, patch and batch size (deep
supervision, Dice + cross-entropy, SGD). Batches are drawn before the clock starts, so the figures
are the step, not the data loading. Each figure is the median of ``--steps`` steps after
``--warmup``; the trainers' settings are their defaults (DeSD's batch size and view size are its
own, so its ratio compares different work).

Usage::

    python bench/method_steps.py                      # CPU, every method
    python bench/method_steps.py --device cuda --steps 20
    python bench/method_steps.py --methods mae,simclr --steps 5
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

METHODS = {
    "nnunet": ("nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnUNetTrainer"),
    "desd": ("nnunet_ssl.desd.trainer", "nnUNetTrainerDeSD"),
    "mae": ("nnunet_ssl.ssl.mae.trainer", "nnUNetTrainerMAE"),
    "genesis": ("nnunet_ssl.ssl.genesis.trainer", "nnUNetTrainerModelsGenesis"),
    "inpainting": ("nnunet_ssl.ssl.inpainting.trainer", "nnUNetTrainerInpainting"),
    "rotation": ("nnunet_ssl.ssl.rotation.trainer", "nnUNetTrainerRotation"),
    "simclr": ("nnunet_ssl.ssl.simclr.trainer", "nnUNetTrainerSimCLR"),
    "moco": ("nnunet_ssl.ssl.moco.trainer", "nnUNetTrainerMoCo"),
    "cmunet": ("nnunet_ssl.ssl.cmunet.trainer", "nnUNetTrainerCMUNet"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--base-features", type=int, default=8)
    p.add_argument("--shape", type=int, nargs=3, default=[32, 48, 48], help="phantom size (voxels)")
    p.add_argument("-o", "--output", help="folder for the nnU-Net folders (default: a temporary one)")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0")
    return args


def plan(root: Path, shape, base_features: int):
    """Write and plan a phantom dataset under ``root``; return (plans, dataset_json)."""
    for k in ("raw", "preprocessed", "results"):
        (root / k).mkdir(parents=True, exist_ok=True)
        os.environ[f"nnUNet_{k}"] = str(root / k)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_compile", "false")
    from nnunet_ssl.phantom import write_phantom_dataset
    from nnunet_ssl.planning import plan_and_preprocess

    write_phantom_dataset(root / "raw", 990, "Steps", n_train=6, shape=tuple(shape))
    plan_and_preprocess(990, base_features=base_features, gpu_memory_gb=0.5, num_processes=1)
    folder = root / "preprocessed" / "Dataset990_Steps"
    return (json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8")),
            json.loads((folder / "dataset.json").read_text(encoding="utf-8")))


def time_method(name: str, plans: dict, dataset_json: dict, device, steps: int, warmup: int) -> list[float]:
    import torch

    module, cls = METHODS[name]
    trainer_class = getattr(importlib.import_module(module), cls)
    plans = json.loads(json.dumps(plans))
    plans["continue_training"] = False
    trainer = trainer_class(plans, "3d_fullres", "all", dataset_json, device=device)
    trainer.on_train_start()  # builds the network, optimiser and data loaders as nnUNetv2_train does
    try:
        trainer.on_train_epoch_start()
        batches = [next(trainer.dataloader_train) for _ in range(warmup + steps)]
        times = []
        for i, batch in enumerate(batches):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return times
    finally:
        trainer.on_train_end()


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.output or tmp)
        print(f"planning a phantom dataset {tuple(args.shape)} with a {args.base_features}-feature U-Net ...",
              flush=True)
        plans, dataset_json = plan(root, args.shape, args.base_features)
        cfg = plans["configurations"]["3d_fullres"]
        print(f"patch {cfg['patch_size']}, batch {cfg['batch_size']}, features "
              f"{cfg['architecture']['arch_kwargs']['features_per_stage']}, device {device}, "
              f"torch threads {torch.get_num_threads()}", flush=True)
        rows = {}
        for name in args.methods:
            times = time_method(name, plans, dataset_json, device, args.steps, args.warmup)
            rows[name] = statistics.median(times)
            print(f"  {name:<11} {rows[name]:.3f} s/step (min {min(times):.3f}, max {max(times):.3f})", flush=True)
    reference = rows.get("nnunet")
    print(f"\n| method | s/step | x nnU-Net step |\n|---|---|---|")
    for name, t in rows.items():
        ratio = f"{t / reference:.2f}" if reference else "-"
        print(f"| {METHODS[name][1]} | {t:.3f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
