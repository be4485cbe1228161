"""Does DeSD with the adaptive recipe collapse at a given total batch? Short runs on phantoms.

Writes a phantom SSL dataset, plans it with a small U-Net (``nnunet-ssl plan``), then for each
batch size trains ``nnUNetTrainerDeSD`` in this process with the adaptive recipe and prints, per
epoch and at the end, the teacher's entropy as a fraction of log K, the RankMe of the teacher's
embedding (of how many views) and whether the collapse guard warned.

    python bench/ssl_collapse.py -o /tmp/collapse --batches 2 4 8 [--epochs 12 --iterations 40]
    python bench/ssl_collapse.py -o /tmp/collapse --batches 64 --device cuda --view 16 112 112
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--view", type=int, nargs=3, default=[16, 32, 32])
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--bottleneck-dim", type=int, default=128)
    p.add_argument("--cases", type=int, default=48)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    out = args.output.resolve()
    env = {"nnUNet_raw": str(out / "raw"), "nnUNet_preprocessed": str(out / "preprocessed"),
           "nnUNet_results": str(out / "results"), "nnUNet_compile": "false"}
    os.environ.update(env)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    for k in ("raw", "preprocessed", "results"):
        (out / k).mkdir(parents=True, exist_ok=True)
    plans_file = out / "preprocessed" / "Dataset980_CollapseSSL" / "nnUNetPlans.json"
    if not plans_file.is_file():
        from nnunet_ssl.phantom import write_phantom_dataset

        write_phantom_dataset(out / "raw", 980, "CollapseSSL", n_train=args.cases, shape=(32, 48, 48),
                              label="brain", seed=0, lesion_drop_hu=20.0)
        bin_dir = Path(sys.executable).parent
        subprocess.run([str(bin_dir / "nnunet-ssl"), "plan", "-d", "980", "--base-features", "8",
                        "--gpu-memory-gb", "0.5", "-np", "1"], check=True, env=dict(os.environ))

    import torch

    from nnunet_ssl.desd.trainer import nnUNetTrainerDeSD

    rows = []
    for batch in args.batches:
        plans = json.loads(plans_file.read_text(encoding="utf-8"))
        dataset_json = json.loads((plans_file.parent / "dataset.json").read_text(encoding="utf-8"))
        plans["configurations"]["3d_fullres"]["ssl"] = {
            "num_epochs": args.epochs, "num_iterations_per_epoch": args.iterations,
            "num_val_iterations_per_epoch": 4, "batch_size": batch, "view_size": args.view,
            "slab_depth": max(24, args.view[0]), "hidden_dim": args.hidden_dim,
            "bottleneck_dim": args.bottleneck_dim, "monitor_warmup_epochs": 3}
        plans["continue_training"] = False
        torch.manual_seed(0)
        trainer = nnUNetTrainerDeSD(plans, "3d_fullres", "all", dataset_json, torch.device(args.device))
        trainer.output_folder = str(out / "results" / f"batch{batch}")
        os.makedirs(trainer.output_folder, exist_ok=True)
        trainer.log_file = os.path.join(trainer.output_folder, "training_log.txt")
        t0 = time.time()
        trainer.run_training()
        s = trainer.ssl_settings
        log = trainer.logger.local_logger.my_fantastic_logging
        log_k = math.log(s.out_dim)
        views = s.rankme_batches * batch
        fractions = [h / log_k for h in log["teacher_entropy"]]
        warned = "WARNING: representation collapse" in open(trainer.log_file, encoding="utf-8").read()
        print(f"batch {batch}: K {s.out_dim}, momentum {s.momentum_teacher}, lr {s.lr:.3g} per 256, "
              f"teacher temp {s.teacher_temp}; {time.time() - t0:.0f} s")
        for e, (f, r) in enumerate(zip(fractions, log["rankme_embedding"])):
            print(f"  epoch {e:>2}: entropy {100 * f:5.1f}% of log K, RankMe {r:5.1f} of {views} views")
        rows.append((batch, s.out_dim, 100 * fractions[0], 100 * fractions[-1], 100 * max(fractions),
                     log["rankme_embedding"][-1], views, warned))
    print("\n| total batch | K | entropy / log K, first epoch | last epoch | highest | RankMe (embedding), last | of views | guard warned |")
    print("|---|---|---|---|---|---|---|---|")
    for b, k, first, last, high, r, v, w in rows:
        print(f"| {b} | {k} | {first:.0f}% | {last:.0f}% | {high:.0f}% | {r:.1f} | {v} | {'yes' if w else 'no'} |")


if __name__ == "__main__":
    main()
