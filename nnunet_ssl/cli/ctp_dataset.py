"""``nnunet-ssl ctp-dataset``: CT perfusion parametric maps as channels of a new nnU-Net raw dataset."""
from __future__ import annotations

import argparse

HELP = ("Write a multi-channel nnU-Net raw dataset from per-case perfusion maps (CBF, CBV, TTP, Tmax, optional MIP; "
        "grey-scale, one grid) and core/penumbra labels (0 background, 1 penumbra, 2 core).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT",
                        help="folder with CBF/, CBV/, TTP/, Tmax/, optionally MIP/, and labels/ sub-folders "
                             "(CASE.nii.gz, .nrrd, .npy ...), or a CSV with columns case,CBF,CBV,TTP,Tmax[,MIP],label")
    parser.add_argument("output", metavar="OUTPUT_DATASET", help="new dataset folder, e.g. $nnUNet_raw/Dataset640_CTP")
    parser.add_argument("--regions", action="store_true",
                        help="region-based labels: hypoperfused = (1, 2), core = (2,), with regions_class_order")
    parser.add_argument("--npy-spacing", nargs=3, type=float, default=None, metavar=("SX", "SY", "SZ"),
                        help="voxel spacing (mm) of .npy inputs, whose arrays are in (z, y, x) order")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.ctp_dataset import write_ctp_dataset
    from nnunet_ssl.errors import UserError

    if args.npy_spacing is not None and min(args.npy_spacing) <= 0:
        raise UserError(f"--npy-spacing must be positive, got {args.npy_spacing}")
    summary = write_ctp_dataset(args.input, args.output, regions=args.regions, npy_spacing=args.npy_spacing,
                                overwrite=args.overwrite, progress=not args.no_progress)
    order = ", ".join(f"{i} = {name}" for i, name in summary.channels.items())
    print(f"Wrote {summary.output}: {len(summary.cases)} case(s), channels {order}"
          + (", region-based labels (hypoperfused, core)" if args.regions else ", labels penumbra 1, core 2"))
    return 0
