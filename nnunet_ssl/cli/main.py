"""The ``nnunet-ssl`` command: one subcommand per task.

Each subcommand lives in its own module of this package with ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports happen
inside ``run`` so that ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from nnunet_ssl.errors import UserError

# subcommand name -> module in nnunet_ssl.cli
COMMANDS = {
    "demo": "demo",
    "prepare-ssl": "prepare_ssl",
    "plan": "plan",
    "plan-target": "plan_target",
    "split": "split",
    "evaluate": "evaluate",
    "compare": "compare",
    "ensemble": "ensemble",
    "preprocess-ct": "preprocess_ct",
    "add-scalars": "add_scalars",
    "clot-dataset": "clot_dataset",
    "ctp-dataset": "ctp_dataset",
    "prepare-aspects": "prepare_aspects",
    "pretrain": "pretrain",
    "experiment": "experiment",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-ssl",
        description="Self-supervised pretraining for nnU-Net: data preparation, planning, "
                    "CT preprocessing, evaluation and a demo. Pretraining itself is "
                    "`nnUNetv2_train ... -tr nnUNetTrainerDeSD`; weight transfer is `nnunet-ssl-transfer`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"nnunet_ssl.cli.{module_name}")
        except ModuleNotFoundError as e:  # a command whose module is not part of this install
            if e.name != f"nnunet_ssl.cli.{module_name}":
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"nnunet-ssl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
