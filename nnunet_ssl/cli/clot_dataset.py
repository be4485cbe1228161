"""``nnunet-ssl clot-dataset``: CTA + NCCT registered to it, as a two-channel nnU-Net raw dataset."""
from __future__ import annotations

import argparse

HELP = ("Register each case's NCCT rigidly to its CTA, resample it onto the CTA grid, optionally crop a box "
        "(mm) and write a two-channel nnU-Net raw dataset (CTA, NCCT) with the clot labels and a QC picture "
        "per case.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT",
                        help="folder with cta/, ncct/ and labels/ sub-folders (CASE.nii.gz, .nrrd, .npy ...), "
                             "or a CSV with columns case,cta,ncct,label (paths relative to the CSV)")
    parser.add_argument("output", metavar="OUTPUT_DATASET", help="new dataset folder, e.g. $nnUNet_raw/Dataset620_Clot")
    parser.add_argument("--box-mm", nargs=6, type=float, default=None, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"),
                        help="crop every case to this box in physical coordinates (mm, the images' LPS frame), "
                             "e.g. around the circle of Willis")
    parser.add_argument("--npy-spacing", nargs=3, type=float, default=None, metavar=("SX", "SY", "SZ"),
                        help="voxel spacing (mm) of .npy inputs, whose arrays are in (z, y, x) order")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.clot_dataset import QC_FOLDER, write_clot_dataset
    from nnunet_ssl.errors import UserError

    if args.npy_spacing is not None and min(args.npy_spacing) <= 0:
        raise UserError(f"--npy-spacing must be positive, got {args.npy_spacing}")
    summary = write_clot_dataset(args.input, args.output, args.box_mm, args.npy_spacing, overwrite=args.overwrite,
                                 progress=not args.no_progress)
    print(f"Wrote {summary.output}: {len(summary.cases)} case(s), channel 0 CTA, channel 1 NCCT registered to it; "
          f"QC pictures in {summary.output / QC_FOLDER}")
    return 0
