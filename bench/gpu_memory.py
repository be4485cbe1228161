"""Estimate, on the CPU, the GPU memory a DeSD step with mixed precision needs at a given batch.

Measuring needs a GPU (``python bench/desd_step.py --device cuda``, run by ``bench/gpu_check.sh``). Without one, this script
counts instead of measures, for the question a GPU user asks first: does the paper's batch
(64 samples, two 16 x 112 x 112 views each, K = 65536) fit in 24 GB?

* **Fixed tensors**, counted exactly from the model: the student's float32 weights (encoder
  and heads), their AdamW state (``exp_avg`` and ``exp_avg_sq``), the teacher and the centre.
* **Gradients**: every student parameter holds a float32 gradient by the end of the backward
  pass (the step has one code path on every device).
* **Saved activations**: the tensors autograd keeps for the backward pass, recorded with
  ``torch.autograd.graph.saved_tensors_hooks`` during one student forward under autocast to
  float16 (PyTorch's CPU autocast lowers the same operators as CUDA's: convolutions and linear
  layers), each storage counted once; the parameters themselves are not counted again, their
  float16 copies made by autocast are. They are counted at two small batches and extended
  linearly (instance normalisation is per sample, so nothing else depends on the batch); the
  script prints both counts, so the straight line can be checked.

Not counted: the CUDA context and cuDNN workspaces, the caching allocator's slack, the teacher's
forward (no gradients; its activations are freed before the student's forward), and the
transient gradients of activations during the backward pass (the largest saved activation is
printed as their scale). The sum is therefore a lower bound of what ``torch.cuda.max_memory_allocated``
would report.

Usage::

    python bench/gpu_memory.py --config paper --batch 64
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Optional

import torch

from desd_step import CONFIGS, build_unet
from nnunet_ssl.desd.model import DeSDNetwork
from nnunet_ssl.desd.settings import DeSDSettings

MIB = 2**20


def saved_activation_bytes(network: DeSDNetwork, batch: int, view: list[int],
                           dtype: Optional[torch.dtype]) -> tuple[int, int]:
    """Bytes autograd saves for the backward pass in one student forward on ``2 * batch`` views
    under autocast to ``dtype`` (None: float32, no autocast; parameters left out), and the
    largest saved activation (a saved tensor whose first dimension is the views)."""
    params = {p.untyped_storage().data_ptr() for p in network.parameters()}
    seen: dict[int, int] = {}
    largest = [0]
    keep = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
            if t.dim() > 0 and t.shape[0] == 2 * batch:
                largest[0] = max(largest[0], storage.nbytes())
            keep.append(t)  # alive until counted, so that no address is reused
        return t

    x = torch.randn(2 * batch, 1, *view)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext():
            network.student(x)
    return sum(seen.values()), largest[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="paper")
    p.add_argument("--batch", type=int, default=64, help="samples per step (two views each)")
    p.add_argument("--count-batches", default="1,2", help="the two small batches the activations are counted at")
    p.add_argument("--fp32", action="store_true",
                   help="count without autocast, to compare with a CPU peak from bench/desd_step.py")
    p.add_argument("--gpu-gb", type=float, default=24.0, help="memory of the GPU to compare with, in GB (10^9 bytes)")
    args = p.parse_args()
    try:
        small = [int(b) for b in args.count_batches.split(",")]
    except ValueError:
        small = []
    if len(small) != 2 or small[0] >= small[1] or small[0] < 1:
        p.error("--count-batches takes two increasing batch sizes, such as 1,2")

    cfg = CONFIGS[args.config]
    settings = DeSDSettings(out_dim=cfg["out_dim"], batch_size=args.batch, view_size=tuple(cfg["view"]),
                            view_sampling="region")
    network = DeSDNetwork.from_settings(build_unet(cfg, False).encoder, settings)
    dtype = None if args.fp32 else torch.float16

    student = sum(p.numel() for p in network.student.parameters()) * 4
    heads = sum(p.numel() for p in network.student.heads.parameters()) * 4
    teacher = sum(p.numel() for p in network.teacher.parameters()) * 4 + network.center.numel() * 4
    counts = [saved_activation_bytes(network, b, cfg["view"], dtype) for b in small]
    per_sample = (counts[1][0] - counts[0][0]) / (small[1] - small[0])
    constant = counts[0][0] - per_sample * small[0]
    activations = constant + per_sample * args.batch
    largest = counts[1][1] / small[1] * args.batch

    rows = [
        ("student weights (float32)", student),
        ("AdamW state (exp_avg, exp_avg_sq)", 2 * student),
        ("teacher weights and centre", teacher),
        ("gradients (float32, every student parameter)", student),
        (f"saved activations, batch {args.batch} ({2 * args.batch} views, {dtype or torch.float32})", activations),
    ]
    print(f"config {args.config}: {len(cfg['features'])} stages {cfg['features'][0]}-{max(cfg['features'])} "
          f"features, views {cfg['view']}, K={cfg['out_dim']}; heads {heads / MIB:.0f} MiB of the student's "
          f"{student / MIB:.0f} MiB")
    for b, (total, big) in zip(small, counts):
        print(f"counted at batch {b}: saved {total / MIB:.1f} MiB, largest saved activation {big / MIB:.1f} MiB")
    print(f"straight line: {per_sample / MIB:.1f} MiB per sample + {constant / MIB:.1f} MiB")
    for name, n in rows:
        print(f"  {name:<58} {n / MIB:>10.0f} MiB")
    total = sum(n for _, n in rows)
    print(f"  {'sum (lower bound: no CUDA context, workspaces, transients)':<58} {total / MIB:>10.0f} MiB "
          f"= {total / 1e9:.1f} GB against {args.gpu_gb:g} GB")
    print(f"largest saved activation at batch {args.batch}: about {largest / MIB:.0f} MiB (the scale of the "
          f"backward pass's transient gradients)")


if __name__ == "__main__":
    main()
