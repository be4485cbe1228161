"""``nnunet-ssl prepare-ssl``: unlabelled head CT -> nnU-Net raw dataset with brain masks as labels."""
from __future__ import annotations

import argparse

HELP = ("Build an nnU-Net raw dataset for SSL pretraining from folders of unlabelled head CT, "
        "with brain masks as labels; bad cases are skipped and reported.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_ssl.prepare_ssl import DEFAULT_MAX_BRAIN_ML, DEFAULT_MIN_BRAIN_ML

    parser.add_argument("-i", "--input", nargs="+", required=True, metavar="[NAME=]DIR",
                        help="folders with one CT per case (.nii.gz/.nii/.nrrd/.mha file or DICOM series "
                             "folder); NAME (default: the folder's name) is the source recorded in the "
                             "manifest and prefixes the case ids. Never modified.")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id (1-999)")
    parser.add_argument("-n", "--name", required=True, help="dataset name: the folder is DatasetXXX_NAME")
    parser.add_argument("--masks", nargs="+", default=[], metavar="DIR",
                        help="brain masks matched to the images by case name (on the image's grid); "
                             "default: computed with --brain-mask")
    parser.add_argument("--brain-mask", choices=["builtin", "auto", "synthstrip", "hdbet"], default="builtin",
                        help="brain extraction when no --masks are given (default: builtin, the CT method "
                             "of nnunet_ssl.ct.brain_mask)")
    parser.add_argument("--min-brain-ml", type=float, default=DEFAULT_MIN_BRAIN_ML, metavar="ML",
                        help=f"smallest plausible brain mask (default: {DEFAULT_MIN_BRAIN_ML:g}, adults)")
    parser.add_argument("--max-brain-ml", type=float, default=DEFAULT_MAX_BRAIN_ML, metavar="ML",
                        help=f"largest plausible brain mask (default: {DEFAULT_MAX_BRAIN_ML:g}, adults)")
    parser.add_argument("--orientation", default="LPS",
                        help="axis order of the written images (permutes/flips only, no interpolation; "
                             "default: LPS); 'keep' writes each file as it is")
    parser.add_argument("--no-hu-check", action="store_true",
                        help="accept images without air and bone in HU (e.g. already clipped CT; "
                             "then give --masks)")
    parser.add_argument("--raw", default=None, metavar="DIR", help="raw datasets folder (default: $nnUNet_raw)")
    parser.add_argument("--force", action="store_true", help="replace an existing dataset folder")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="cases processed in parallel (default: 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from collections import Counter

    from nnunet_ssl.ct.resample import parse_orientation
    from nnunet_ssl.prepare_ssl import REPORT_NAME, PrepareOptions, prepare_ssl_dataset

    orientation = parse_orientation(args.orientation)
    options = PrepareOptions(args.min_brain_ml, args.max_brain_ml, args.brain_mask, orientation,
                             hu_check=not args.no_hu_check)
    summary = prepare_ssl_dataset(args.input, args.dataset_id, args.name, args.raw, args.masks, options,
                                  force=args.force, jobs=args.jobs, progress=not args.no_progress)
    print(f"Wrote {summary.folder}: {len(summary.included)} case(s), {len(summary.skipped)} skipped "
          f"(reasons in {summary.folder / REPORT_NAME})")
    for reason, n in Counter(r.reason.split(":")[0] for r in summary.skipped).most_common(5):
        print(f"  {n} x {reason}")
    return 0
