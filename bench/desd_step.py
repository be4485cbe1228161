"""Time and peak memory of one DeSD training step against plain work on the same network.

Workloads (same network, batch and view size):

* ``desd``: one full DeSD step (student encoder and all heads on both views, teacher
  forward, loss, backward, gradient clipping, AdamW, teacher EMA, centre update) via
  :func:`nnunet_ssl.desd.step.train_step`, the function the trainer calls;
* ``bare``: the bare encoder work: teacher encoder forward without gradients and student
  encoder forward and backward on both views, no heads, a trivial loss, the same AdamW
  on the student encoder;
* ``finetune``: one plain nnU-Net fine-tuning step of the whole U-Net on one patch
  per sample (deep supervision, Dice + cross-entropy, SGD with Nesterov momentum).

Times come from one process that runs the workloads' steps in turn (``--warmup`` steps of
each, then ``--steps`` timed steps of each, alternating), so that every workload sees the
same machine: on a shared virtual machine the same work runs several per cent faster or
slower from one process to the next, which would otherwise land in the ratios. The
DeSD/bare time ratio is the median of the step-by-step ratios. Peak memory comes from one
process per workload (``--warmup`` steps and one more): on CUDA
``torch.cuda.max_memory_allocated``, on the CPU the growth of the peak resident set over the
resident set after the imports (so the parameters, optimiser state and activations all
count, the libraries do not). With ``--rounds R`` all of it runs R times and each figure is
the median over the rounds.

Precision and compilation follow the trainer: ``--amp auto`` (the default) is float16 autocast
with a ``GradScaler`` on CUDA and float32 on the CPU, as nnU-Net; ``--amp bf16`` is bfloat16
autocast without a scaler (the CPU's mixed precision), ``--amp off`` float32 everywhere.
``--compile`` compiles the student and teacher encoders (DeSD: ``DeSDNetwork.compile_encoders``,
as the trainer does where nnU-Net compiles; bare: the same two encoders) and the fine-tuning
U-Net, as nnU-Net does; compilation happens during the warm-up steps.

On the CPU, glibc's allocator hands large blocks back to the system when they are freed
and the next step faults them in again, page by page: in the paper configuration that is
most of a step's system time, in every workload (the ``faults/step`` and ``sys s/step``
columns). ``--keep-freed-memory`` runs the workloads with glibc told to keep freed memory
(``MALLOC_MMAP_MAX_=0``, a trim threshold above any heap), which measures the computation
without that cost; it applies to all workloads alike.

Usage::

    python bench/desd_step.py --config tiny
    python bench/desd_step.py --config paper --steps 5 --rounds 3 --workloads bare,desd
    python bench/desd_step.py --config paper --steps 5 --rounds 2 --workloads bare,desd --keep-freed-memory
    python bench/desd_step.py --config paper --device cuda --compile --workloads bare,desd
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    # 4 stages, 16-128 features, 32^3 views, K = 4096
    "tiny": {"features": [16, 32, 64, 128], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
             "kernels": [[3, 3, 3]] * 4, "view": [32, 32, 32], "out_dim": 4096},
    # 6 stages, 32-320 features, 16 x 112 x 112 views, K = 65536 (the paper's SSL set-up)
    "paper": {"features": [32, 64, 128, 256, 320, 320],
              "strides": [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 1, 1]],
              "kernels": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
              "view": [16, 112, 112], "out_dim": 65536},
}


def build_unet(cfg: dict, deep_supervision: bool):
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    n = len(cfg["features"])
    kwargs = {
        "n_stages": n, "features_per_stage": cfg["features"], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": cfg["kernels"], "strides": cfg["strides"], "n_conv_per_stage": [2] * n,
        "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    torch.manual_seed(0)
    return get_network_from_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet", kwargs,
                                  ["conv_op", "norm_op", "dropout_op", "nonlin"], 1, 2, allow_init=True,
                                  deep_supervision=deep_supervision)


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def precision(args, device):
    """``(autocast dtype or None, GradScaler or None)`` for ``--amp``."""
    import torch

    mode = args.amp if args.amp != "auto" else ("fp16" if device.type == "cuda" else "off")
    if mode == "off":
        return None, None
    if mode == "bf16":
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler(device.type)


def make_step(args, workload: str):
    """The step function of ``workload`` on its own model and optimiser."""
    import torch

    from nnunet_ssl.desd.model import DeSDNetwork
    from nnunet_ssl.desd.settings import DeSDSettings
    from nnunet_ssl.desd.step import StepSchedule, parameter_groups, train_step

    torch.manual_seed(0)
    cfg = CONFIGS[args.config]
    device = torch.device(args.device)
    dtype, scaler = precision(args, device)
    autocast = dict(device_type=device.type, dtype=dtype, enabled=dtype is not None)
    b = args.batch
    views = [torch.randn(b, 1, *cfg["view"], device=device) for _ in range(2)]
    settings = DeSDSettings(out_dim=args.out_dim or cfg["out_dim"], batch_size=b, view_size=tuple(cfg["view"]),
                            view_sampling="region")  # views are random tensors here
    settings = settings.replace(hidden_dim=args.hidden_dim or settings.hidden_dim,
                                shared_last_layer=args.shared_last_layer)

    if workload in ("desd", "bare"):
        kind = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[args.optimizer]
        encoder = build_unet(cfg, False).encoder.to(device)
        if workload == "desd":
            net = DeSDNetwork.from_settings(encoder, settings).to(device)
            if args.compile:
                net.compile_encoders()
            opt = torch.optim.AdamW(parameter_groups(net.student), **kind)
            schedule = StepSchedule(lr=1e-4, weight_decay=0.04, momentum=0.9996, teacher_temp=0.04,
                                    freeze_last_layer=False)

            def step():
                train_step(net, net.student, opt, views[0], views[1], settings, schedule, dtype, scaler)
        else:
            # no heads at all: their weights would otherwise count in this workload's memory
            student, teacher = encoder, copy.deepcopy(encoder).requires_grad_(False)
            student.return_skips, teacher.return_skips = True, False  # as in DeSDNetwork
            opt = torch.optim.AdamW(parameter_groups(student), **kind)
            run_student, run_teacher = student, teacher
            if args.compile:
                run_student, run_teacher = torch.compile(student), torch.compile(teacher)

            def step():
                x = torch.cat(views)
                opt.zero_grad(set_to_none=True)
                with torch.autocast(**autocast):
                    with torch.no_grad():  # first, as train_step does: its activations are gone before the student's
                        run_teacher(x)
                    loss = run_student(x)[-1].float().mean()
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)  # as train_step, which clips the unscaled gradients
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
    else:
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

        unet = build_unet(cfg, True).to(device)
        run_unet = torch.compile(unet) if args.compile else unet
        n_out = len(cfg["features"]) - 1
        weights = [1 / 2 ** i for i in range(n_out)]
        weights[-1] = 0
        loss_fn = DeepSupervisionWrapper(
            DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                           weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss),
            [w / sum(weights) for w in weights])
        with torch.no_grad():
            shapes = [o.shape[2:] for o in unet(views[0])]
        targets = [torch.randint(0, 2, (b, 1, *s), device=device).float() for s in shapes]
        opt = torch.optim.SGD(unet.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(**autocast):
                loss = loss_fn(run_unet(views[0]), targets)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(unet.parameters(), 12)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(unet.parameters(), 12)
                opt.step()
    return step


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def memory_worker(args) -> dict:
    """Peak memory of one workload, alone in this process: ``--warmup`` steps and one more."""
    import torch

    rss_after_imports = _current_rss_mb()
    device = torch.device(args.device)
    step = make_step(args, args.workload)
    for _ in range(args.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    _sync(device)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        peak_kind = "CUDA max allocated"
    else:
        # ru_maxrss is in KiB on Linux; the libraries' own footprint is left out
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_after_imports
        peak_kind = "peak RSS above the RSS after imports"
    return {"peak_mb": peak_mb, "peak_kind": peak_kind}


def timing_worker(args, workloads: list[str]) -> dict:
    """Step times of all ``workloads`` in this one process, their steps taken in turn."""
    import torch

    device = torch.device(args.device)
    steps = {w: make_step(args, w) for w in workloads}
    for _ in range(args.warmup):
        for w in workloads:
            steps[w]()
    _sync(device)
    out = {w: {"times": [], "faults": 0, "sys_s": 0.0} for w in workloads}
    for _ in range(args.steps):
        for w in workloads:
            before = resource.getrusage(resource.RUSAGE_SELF)
            t = time.perf_counter()
            steps[w]()
            _sync(device)
            out[w]["times"].append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_SELF)
            # minor page faults: memory the allocator gave back to the system and takes again
            out[w]["faults"] += (after.ru_minflt - before.ru_minflt) / args.steps
            out[w]["sys_s"] += (after.ru_stime - before.ru_stime) / args.steps
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", choices=["auto", "off", "fp16", "bf16"], default="auto",
                   help="auto: float16 autocast and a GradScaler on CUDA, float32 on the CPU (as the trainer); "
                        "fp16 (with a GradScaler) or bf16 (without) on any device; off: float32")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders (and the fine-tuning U-Net)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the whole measurement this many times")
    p.add_argument("--workloads", default="bare,desd,finetune", help="comma-separated subset to run")
    p.add_argument("--optimizer", choices=["fused", "foreach", "for-loop"], default="fused",
                   help="AdamW implementation for desd and bare (default: fused, as make_optimizer)")
    p.add_argument("--out-dim", type=int, help="K instead of the configuration's")
    p.add_argument("--hidden-dim", type=int, help="head MLP width instead of the default 2048")
    p.add_argument("--shared-last-layer", action="store_true", help="opt-in: one last layer for all heads")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="run the workloads with glibc keeping freed memory (no page faults of reused memory)")
    p.add_argument("--no-memory", action="store_true",
                   help="time only: skip the peak-memory processes (with --compile, each would compile again)")
    p.add_argument("--workload", choices=["desd", "bare", "finetune"], help=argparse.SUPPRESS)
    p.add_argument("--timing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    workloads = args.workloads.split(",")
    if args.workload:
        print(json.dumps(memory_worker(args)))
        return
    if args.timing:
        print(json.dumps(timing_worker(args, workloads)))
        return

    def run(extra: list[str]) -> dict:
        cmd = [sys.executable, __file__] + extra + sys.argv[1:]
        if "--device" not in sys.argv:
            cmd += ["--device", args.device]
        env = dict(os.environ)
        if args.keep_freed_memory:
            env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**40))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    med = statistics.median
    rounds = []
    for r in range(args.rounds):
        results = run(["--timing"])
        for w in workloads:
            not_measured = {"peak_mb": float("nan"), "peak_kind": "peak memory not measured"}
            results[w].update(not_measured if args.no_memory else run(["--workload", w]))
            results[w]["median_s"] = med(results[w]["times"])
        for other in ("bare", "finetune"):
            if "desd" in workloads and other in workloads:  # step by step: both saw the same moment
                results[f"desd/{other}"] = med(d / o for d, o in zip(results["desd"]["times"], results[other]["times"]))
        rounds.append(results)
        if args.rounds > 1:
            print(f"round {r + 1}: " + ", ".join(f"{w} {results[w]['median_s']:.3f} s {results[w]['peak_mb']:.0f} MiB "
                                                   f"{results[w]['faults']:.0f} faults/step" for w in workloads)
                  + "".join(f", {k} {v:.2f}x" for k, v in results.items() if "/" in k), flush=True)
    cfg = CONFIGS[args.config]
    import torch

    dtype, scaler = precision(args, torch.device(args.device))
    amp = f"{str(dtype).replace('torch.', '')}{' + GradScaler' if scaler else ''}" if dtype else "off"
    variant = [v for v, on in (("shared last layer", args.shared_last_layer), ("compiled", args.compile),
                               ("glibc keeps freed memory", args.keep_freed_memory)) if on]
    print(f"config {args.config}: {len(cfg['features'])} stages {cfg['features'][0]}-{max(cfg['features'])} "
          f"features, views {cfg['view']}, K={args.out_dim or cfg['out_dim']}, "
          f"{f'head MLP width {args.hidden_dim}, ' if args.hidden_dim else ''}batch {args.batch}, "
          f"device {args.device}, AMP {amp}, AdamW {args.optimizer}"
          f"{', ' + ', '.join(variant) if variant else ''}; {args.steps} steps of each after {args.warmup}, "
          f"in turn in one process{f', median over {args.rounds} rounds' if args.rounds > 1 else ''}")
    print(f"{'workload':<10} {'step s':>9} {'views/s':>9} {'peak MiB':>10} {'faults/step':>12} {'sys s/step':>11}  "
          f"({rounds[0][workloads[0]]['peak_kind']}; minor page faults and system time per timed step; "
          f"views: 2 per sample for desd and bare, 1 patch per sample for finetune)")
    for w in workloads:
        step_s = med(r[w]["median_s"] for r in rounds)
        views = args.batch * (1 if w == "finetune" else 2)
        print(f"{w:<10} {step_s:>9.3f} {views / step_s:>9.2f} {med(r[w]['peak_mb'] for r in rounds):>10.0f} "
              f"{med(r[w]['faults'] for r in rounds):>12.0f} {med(r[w]['sys_s'] for r in rounds):>11.3f}")
    for other, label in (("bare", "bare encoder work"), ("finetune", "fine-tuning step")):
        if "desd" in workloads and other in workloads:
            t = med(r[f"desd/{other}"] for r in rounds)
            m = med(r["desd"]["peak_mb"] / r[other]["peak_mb"] for r in rounds)
            print(f"DeSD / {label + ':':<19} time {t:.2f}x (median of the step-by-step ratios)"
                  + ("" if args.no_memory else f", peak memory {m:.2f}x"))


if __name__ == "__main__":
    main()
