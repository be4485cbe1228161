"""``nnunet-ssl plan``: fingerprint, plan and preprocess a dataset for SSL pretraining."""
from __future__ import annotations

HELP = "Fingerprint, plan and preprocess an nnU-Net dataset, recording SSL settings in the plans."


def add_arguments(parser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name in nnUNet_raw")
    from nnunet_ssl.planning import PLANNERS

    parser.add_argument("--planner", default="default", choices=sorted(PLANNERS),
                        help="preset naming a stock nnU-Net planner: default (plain U-Net), resenc-m or "
                             "resenc-l (residual encoder, about 9 or 24 GB)")
    parser.add_argument("--base-features", type=int, default=None,
                        help="features of the first U-Net stage (nnU-Net: 32); small values for CPU runs")
    parser.add_argument("--max-features", type=int, default=None,
                        help="cap on the features per stage (nnU-Net: 320 in 3D)")
    parser.add_argument("--gpu-memory-gb", type=float, default=None,
                        help="memory target of the planner; smaller gives smaller patches")
    parser.add_argument("-p", "--plans-name", default=None, help="plans identifier (default: the planner's)")
    parser.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres"],
                        help="configurations to plan, preprocess and give the SSL settings (default: 3d_fullres); "
                             "one nnU-Net does not plan for this dataset is refused")
    parser.add_argument("--ssl", nargs="*", default=[], metavar="NAME=VALUE",
                        help="SSL settings to record in the plans, e.g. --ssl out_dim=4096 'view_size=[16,64,64]'")
    parser.add_argument("-np", "--num-processes", type=int, default=2)
    parser.add_argument("--no-verify", action="store_true", help="skip nnU-Net's dataset integrity check")
    parser.add_argument("--force", action="store_true",
                        help="replace plans of that name planned before (and their ssl settings)")


def run(args) -> int:
    from nnunet_ssl.planning import parse_settings, plan_and_preprocess

    plans = plan_and_preprocess(args.dataset, args.planner, args.base_features, args.gpu_memory_gb,
                                args.plans_name, args.configurations, parse_settings(args.ssl),
                                args.num_processes, verify=not args.no_verify, max_features=args.max_features,
                                force=args.force)
    print(f"Planned and preprocessed; plans: {plans}")
    print(f"Pretrain with: nnUNetv2_train {args.dataset} {args.configurations[0]} all -tr nnUNetTrainerDeSD "
          f"-p {plans}")
    return 0
