"""How long an ``nnunet-ssl experiment`` config takes: its training steps, and hours from step times.

The steps are exact (read from the config and the trainers' settings, defaults included):
each SSL method pretrains ``num_epochs x (num_iterations_per_epoch + num_val_iterations_per_epoch)``
steps once; each arm fine-tunes ``epochs x (iterations + val_iterations)`` steps. The time per step
is what you measured, e.g. with ``bench/desd_step.py --config paper --device cuda`` (its ``desd``
and ``finetune`` workloads) on the GPU the experiment will use; validation steps are counted as
training steps (an overestimate: they have no backward pass). Prediction and evaluation are left out.

Usage::

    python bench/experiment_time.py docs/presets/seed-paper-grid.json --pool-size 200
    python bench/experiment_time.py CONFIG --pool-size 200 --pretrain-step-s 0.9 --finetune-step-s 0.4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunet_ssl.errors import UserError  # noqa: E402
from nnunet_ssl.experiment import load_config, method_counts, trainer_settings  # noqa: E402


def steps(config, pool_size: int) -> dict:
    """``pretrain`` (steps per SSL method), ``arms`` (arms per method) and ``finetune_per_arm`` steps."""
    pretrain, arms = {}, {}
    for m in config.methods.values():
        arms[m.name] = len(method_counts(m, config, pool_size)) * len(config.seeds)
        if not m.is_scratch:
            s = trainer_settings(m.trainer).from_dict(m.settings)
            pretrain[m.name] = s.num_epochs * (s.num_iterations_per_epoch + s.num_val_iterations_per_epoch)
    f = config.finetune
    return {"pretrain": pretrain, "arms": arms, "finetune_per_arm": f["epochs"] * (f["iterations"] + f["val_iterations"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--pool-size", type=int, required=True, help="labelled training cases (what \"all\" means)")
    p.add_argument("--pretrain-step-s", type=float, default=None, help="seconds per pretraining step (measured)")
    p.add_argument("--finetune-step-s", type=float, default=None, help="seconds per fine-tuning step (measured)")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        s = steps(config, args.pool_size)
    except UserError as e:
        print(f"experiment_time: error: {e}", file=sys.stderr)
        return 2
    total_pre, n_arms = sum(s["pretrain"].values()), sum(s["arms"].values())
    total_ft = n_arms * s["finetune_per_arm"]
    for name, n in s["pretrain"].items():
        print(f"pretraining {name}: {n:,} steps")
    print(f"pretraining, all methods: {total_pre:,} steps")
    print(f"fine-tuning: {n_arms} arms x {s['finetune_per_arm']:,} steps = {total_ft:,} steps")
    hours = 0.0
    if args.pretrain_step_s is not None:
        hours += total_pre * args.pretrain_step_s / 3600
        print(f"pretraining at {args.pretrain_step_s:g} s/step: {total_pre * args.pretrain_step_s / 3600:,.1f} h")
    if args.finetune_step_s is not None:
        hours += total_ft * args.finetune_step_s / 3600
        print(f"fine-tuning at {args.finetune_step_s:g} s/step: {total_ft * args.finetune_step_s / 3600:,.1f} h")
    if hours:
        slots = max(1, len(config.gpus))
        print(f"total on one GPU: {hours:,.1f} h; jobs spread over {slots} GPU(s): about {hours / slots:,.1f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
