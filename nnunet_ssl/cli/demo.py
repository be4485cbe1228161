"""``nnunet-ssl demo``: the whole workflow on synthetic stroke phantoms."""
from __future__ import annotations

HELP = ("Run the whole workflow on synthetic NCCT stroke phantoms on the CPU: SSL pretraining, transfer, "
        "fine-tuning with and without it, prediction and Dice.")


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", default="demo_output",
                        help="folder for everything the demo writes [demo_output]")
    parser.add_argument("--force", action="store_true",
                        help="reuse a non-empty output folder, removing the demo's previous outputs in it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantoms")


def run(args) -> int:
    from pathlib import Path

    from nnunet_ssl.demo import DemoConfig, run_demo

    run_demo(Path(args.output), args.force, DemoConfig(seed=args.seed))
    return 0
