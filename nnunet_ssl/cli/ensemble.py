"""``nnunet-ssl ensemble``: combine several runs' predictions by majority vote or probability averaging."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("Combine the predictions of several runs (e.g. three seeds) into one: per-voxel majority vote of the "
        "label maps, or nnU-Net's average of saved probabilities.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--inputs", nargs="+", type=Path, required=True, metavar="DIR",
                        help="prediction folders of the runs (nnUNetv2_predict -o), at least 2, same cases")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                        help="folder for the ensemble's label maps (same file names and geometry as the inputs), "
                             "plus dataset.json and plans.json copied from the first run; new or empty "
                             "unless --force")
    parser.add_argument("-m", "--method", choices=("majority", "average"), default="majority",
                        help="majority: per-voxel vote of the label maps, ties go to the lowest tied label "
                             "(background for lesion masks) (default, as in the seed paper); average: mean of the "
                             ".npz probabilities of nnUNetv2_predict --save_probabilities, nnU-Net's ensembling")
    parser.add_argument("-fe", "--file-ending", default=None,
                        help="ending of the label map files (default: file_ending of the first run's dataset.json)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="with --method average, also write the averaged probabilities (.npz and .pkl)")
    parser.add_argument("--force", action="store_true",
                        help="replace the whole content of a non-empty output folder (default: refuse it)")
    parser.add_argument("-np", "--num-processes", type=int, default=1, metavar="N",
                        help="cases processed in parallel (default: 1)")


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.ensemble import ensemble_folders

    report = ensemble_folders(args.inputs, args.output, args.method, args.file_ending, args.save_probabilities,
                              args.num_processes, args.force)
    how = "majority vote" if report.method == "majority" else "probability average"
    print(f"Wrote {len(report.cases)} case(s) to {report.output}: {how} of {report.n_runs} runs.")
    return 0
