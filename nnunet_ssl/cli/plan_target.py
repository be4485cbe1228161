"""``nnunet-ssl plan-target``: plan the labelled dataset with the SSL plans' encoder and intensity statistics."""
from __future__ import annotations

import argparse

HELP = ("Plan and preprocess a labelled target dataset so that an encoder pretrained on the SSL dataset "
        "fits it: same architecture, spacing and CT normalisation, patch size fitted to the target.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="target dataset id or name (labelled, in nnUNet_raw)")
    parser.add_argument("--from", dest="ssl_dataset", required=True, metavar="SSL_DATASET",
                        help="the SSL dataset (id or name) planned with `nnunet-ssl plan`")
    parser.add_argument("-p", "--plans", default="nnUNetPlans",
                        help="plans identifier of the SSL dataset (default: nnUNetPlans)")
    parser.add_argument("-tp", "--target-plans", dest="plans_name", default=None,
                        help="plans identifier for the target (default: <SSL plans>_from_DatasetXXX, "
                             "e.g. nnUNetPlans_from_Dataset500); pass it as -p to nnUNetv2_train and "
                             "nnunet-ssl-transfer")
    parser.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres"],
                        help="configurations to plan and preprocess (default: 3d_fullres, the one DeSD pretrains)")
    parser.add_argument("-np", "--num-processes", type=int, default=2)
    parser.add_argument("--no-verify", action="store_true", help="skip nnU-Net's dataset integrity check")
    parser.add_argument("--force", action="store_true", help="replace existing target plans of that name")


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.target_plans import plan_target

    result = plan_target(args.dataset, args.ssl_dataset, args.plans, args.plans_name, args.configurations,
                         args.num_processes, verify=not args.no_verify, force=args.force)
    print(f"Planned and preprocessed; plans: {result.plans_name} ({result.plans_file})")
    for name, c in result.configurations.items():
        print(f"  {name}: patch size {c['patch_size']} (SSL {c['ssl_patch_size']}), batch size {c['batch_size']}")
    print(f"Next: nnunet-ssl-transfer CHECKPOINT -d {args.dataset} -p {result.plans_name} -o pretrained.pth; "
          f"nnUNetv2_train {args.dataset} 3d_fullres FOLD -p {result.plans_name} -pretrained_weights pretrained.pth")
    return 0
