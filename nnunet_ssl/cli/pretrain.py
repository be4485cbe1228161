"""``nnunet-ssl pretrain``: an SSL trainer as ``nnUNetv2_train`` runs it, also as one process of ``torchrun``."""
from __future__ import annotations

import argparse

HELP = ("Pretrain with an SSL trainer as nnUNetv2_train does; under torchrun (any number of nodes and processes "
        "per node) each process joins the launcher's process group. Needs nnUNet_extTrainer like nnUNetv2_train.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="SSL dataset id or name")
    parser.add_argument("configuration", metavar="CONFIGURATION", help="plans configuration, e.g. 3d_fullres or 2d")
    parser.add_argument("fold", metavar="FOLD", help="fold (0-4) or 'all'")
    parser.add_argument("-tr", "--trainer", required=True, help="SSL trainer, e.g. nnUNetTrainerDeSD")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier [nnUNetPlans]")
    parser.add_argument("--c", dest="continue_training", action="store_true",
                        help="continue from checkpoint_latest.pth, as nnUNetv2_train --c")
    parser.add_argument("-device", "--device", default="cuda", choices=["cuda", "cpu", "mps"],
                        help="cuda: one GPU per process (LOCAL_RANK under torchrun); cpu: gloo [cuda]")


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.errors import UserError

    if args.fold != "all" and not args.fold.isdigit():
        raise UserError(f"FOLD must be a number or 'all', got {args.fold!r}")
    from nnunet_ssl.distributed import run_pretraining

    run_pretraining(args.dataset, args.configuration, args.fold, args.trainer, args.plans, args.continue_training,
                    args.device)
    return 0
