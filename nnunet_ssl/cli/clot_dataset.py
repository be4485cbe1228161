"""``nnunet-ssl clot-dataset``: CTA + NCCT registered to it, as a two-channel nnU-Net raw dataset."""
from __future__ import annotations

import argparse

HELP = ("Register each case's NCCT rigidly to its CTA, resample it onto the CTA grid, optionally crop a box "
        "(mm) and write a two-channel nnU-Net raw dataset (CTA, NCCT) with the clot labels and a QC picture "
        "per case.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_ssl.cli.raw_options import add_raw_dataset_arguments

    parser.add_argument("input", metavar="INPUT",
                        help="folder with cta/, ncct/ and labels/ sub-folders (CASE.nii.gz, .nrrd, .npy ...), "
                             "or a CSV with columns case,cta,ncct,label (paths relative to the CSV)")
    parser.add_argument("output", metavar="OUTPUT_DATASET", help="new dataset folder, e.g. $nnUNet_raw/Dataset620_Clot")
    parser.add_argument("--box-mm", nargs=6, type=float, default=None, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"),
                        help="crop every case to this box in physical coordinates (mm, the images' LPS frame), "
                             "e.g. around the circle of Willis")
    parser.add_argument("--template", default=None, metavar="TEMPLATE_CT",
                        help="give --box-mm in the physical space of this CT (e.g. one case, or a template head): it "
                             "is registered rigidly to every CTA and the box is mapped onto each case")
    add_raw_dataset_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.cli.raw_options import npy_spacing
    from nnunet_ssl.clot_dataset import QC_FOLDER, write_clot_dataset

    summary = write_clot_dataset(args.input, args.output, args.box_mm, npy_spacing(args), overwrite=args.overwrite,
                                 progress=not args.no_progress, template=args.template)
    print(f"Wrote {summary.output}: {len(summary.cases)} case(s), channel 0 CTA, channel 1 NCCT registered to it; "
          f"QC pictures in {summary.output / QC_FOLDER}")
    return 0
