"""Time and peak memory of one DeSD training step against plain work on the same network.

Workloads (same network, batch and view size):

* ``desd``: one full DeSD step (student encoder and all heads on both views, teacher
  forward, loss, backward, gradient clipping, AdamW, teacher EMA, centre update) via
  :func:`nnunet_ssl.desd.step.train_step`, the function the trainer calls;
* ``bare``: the bare encoder work: student encoder forward and backward on both views
  and teacher encoder forward without gradients, no heads, a trivial loss;
* ``finetune``: one plain nnU-Net fine-tuning step of the whole U-Net on one patch
  per sample (deep supervision, Dice + cross-entropy, SGD with Nesterov momentum).

Each workload runs in its own process so that its peak memory can be read: on CUDA
``torch.cuda.max_memory_allocated``, on the CPU the growth of the peak resident set
over the resident set after set-up. Times are medians over ``--steps`` steps after
``--warmup`` steps.

Usage::

    python bench/desd_step.py --config tiny
    python bench/desd_step.py --config paper --steps 5
"""
from __future__ import annotations

import argparse
import json
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


def worker(args) -> dict:
    import torch

    from nnunet_ssl.desd.model import DeSDNetwork
    from nnunet_ssl.desd.settings import DeSDSettings
    from nnunet_ssl.desd.step import StepSchedule, parameter_groups, train_step

    rss_after_imports = _current_rss_mb()
    cfg = CONFIGS[args.config]
    device = torch.device(args.device)
    use_amp = device.type == "cuda" and not args.no_amp
    b = args.batch
    views = [torch.randn(b, 1, *cfg["view"], device=device) for _ in range(2)]
    settings = DeSDSettings(out_dim=cfg["out_dim"], batch_size=b, view_size=tuple(cfg["view"]))

    if args.workload in ("desd", "bare"):
        encoder = build_unet(cfg, False).encoder
        net = DeSDNetwork(encoder, encoder.output_channels, settings.out_dim, settings.hidden_dim,
                          settings.bottleneck_dim, settings.use_bn_in_head).to(device)
        opt = torch.optim.AdamW(parameter_groups(net.student if args.workload == "desd" else net.student.encoder))
        scaler = torch.amp.GradScaler("cuda") if use_amp else None
        schedule = StepSchedule(lr=1e-4, weight_decay=0.04, momentum=0.9996, teacher_temp=0.04,
                                freeze_last_layer=False)

        def step():
            if args.workload == "desd":
                train_step(net, net.student, opt, views[0], views[1], settings, schedule, scaler)
                return
            x = torch.cat(views)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=use_amp):
                loss = net.student.encoder(x)[-1].float().mean()
                with torch.no_grad():
                    net.teacher.encoder(x)
            loss.backward()
            opt.step()
    else:
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

        unet = build_unet(cfg, True).to(device)
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
        scaler = torch.amp.GradScaler("cuda") if use_amp else None

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=use_amp):
                loss = loss_fn(unet(views[0]), targets)
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

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        peak_kind = "CUDA max allocated"
    else:
        # ru_maxrss is in KiB on Linux; the libraries' own footprint is left out
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_after_imports
        peak_kind = "peak RSS above the RSS after imports"
    return {"workload": args.workload, "median_s": statistics.median(times), "peak_mb": peak_mb,
            "peak_kind": peak_kind, "amp": use_amp}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (AMP is used on CUDA by default)")
    p.add_argument("--workload", choices=["desd", "bare", "finetune"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.workload:
        print(json.dumps(worker(args)))
        return
    results = {}
    for workload in ("bare", "desd", "finetune"):
        cmd = [sys.executable, __file__, "--workload", workload] + sys.argv[1:]
        if "--device" not in sys.argv:
            cmd += ["--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[workload] = json.loads(out.strip().splitlines()[-1])
    cfg = CONFIGS[args.config]
    print(f"config {args.config}: {len(cfg['features'])} stages {cfg['features'][0]}-{max(cfg['features'])} "
          f"features, views {cfg['view']}, K={cfg['out_dim']}, batch {args.batch}, device {args.device}, "
          f"AMP {results['desd']['amp']}, median of {args.steps} steps after {args.warmup}")
    print(f"{'workload':<10} {'step s':>9} {'peak MiB':>10}  ({results['desd']['peak_kind']})")
    for name, r in results.items():
        print(f"{name:<10} {r['median_s']:>9.3f} {r['peak_mb']:>10.0f}")
    d, b, f = results["desd"], results["bare"], results["finetune"]
    print(f"DeSD / bare encoder work:  time {d['median_s'] / b['median_s']:.2f}x, "
          f"peak memory {d['peak_mb'] / b['peak_mb']:.2f}x")
    print(f"DeSD / fine-tuning step:   time {d['median_s'] / f['median_s']:.2f}x, "
          f"peak memory {d['peak_mb'] / f['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
