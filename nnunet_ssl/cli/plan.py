"""``nnunet-ssl plan``: fingerprint, plan and preprocess a dataset for SSL pretraining."""
from __future__ import annotations

HELP = "Fingerprint, plan and preprocess an nnU-Net dataset, recording SSL settings in the plans."


def add_arguments(parser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name in nnUNet_raw")
    parser.add_argument("--planner", default="default", help="default | resenc-m | resenc-l (stock nnU-Net planners)")
    parser.add_argument("--base-features", type=int, default=None,
                        help="features of the first U-Net stage (nnU-Net: 32); small values for CPU runs")
    parser.add_argument("--gpu-memory-gb", type=float, default=None,
                        help="memory target of the planner; smaller gives smaller patches")
    parser.add_argument("-p", "--plans-name", default=None, help="plans identifier (default: the planner's)")
    parser.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres"])
    parser.add_argument("--ssl", nargs="*", default=[], metavar="NAME=VALUE",
                        help="SSL settings to record in the plans, e.g. --ssl out_dim=4096 'view_size=[16,64,64]'")
    parser.add_argument("-np", "--num-processes", type=int, default=2)
    parser.add_argument("--no-verify", action="store_true", help="skip nnU-Net's dataset integrity check")


def run(args) -> int:
    from nnunet_ssl.planning import parse_settings, plan_and_preprocess

    plans = plan_and_preprocess(args.dataset, args.planner, args.base_features, args.gpu_memory_gb,
                                args.plans_name, args.configurations, parse_settings(args.ssl),
                                args.num_processes, verify=not args.no_verify)
    print(f"Planned and preprocessed; plans: {plans}")
    return 0
