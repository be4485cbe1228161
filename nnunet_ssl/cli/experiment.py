"""``nnunet-ssl experiment``: the label-efficiency study (scratch against SSL methods) on your datasets."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("Run a label-efficiency experiment from a JSON config: pretrain each SSL method once, fine-tune every "
        "method x labelled count x seed with stock nnU-Net, predict and evaluate the held-out test cases, and "
        "write report.md (table, paired statistics against scratch, plots). Rerun to continue a killed run.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", type=Path, help="experiment config (JSON; docs/experiment.md)")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                        help="experiment folder: nnU-Net's folders, the arms, logs, results.json and report.md "
                             "(created; continued when it holds this experiment)")
    parser.add_argument("--check", action="store_true",
                        help="check the config, datasets and split, list the arms, and stop")
    parser.add_argument("--force", action="store_true",
                        help="start over: remove the experiment's own entries of the folder first")


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.errors import UserError
    from nnunet_ssl.experiment import load_config, plan_summary, run_experiment

    if args.output is None and not args.check:
        raise UserError("give the experiment folder with -o DIR (or --check to only check the config)")
    config = load_config(args.config)
    if args.check:
        print(plan_summary(config))
        return 0
    run_experiment(config, args.output, force=args.force)
    return 0
