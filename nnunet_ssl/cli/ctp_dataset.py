"""``nnunet-ssl ctp-dataset``: CT perfusion parametric maps as channels of a new nnU-Net raw dataset."""
from __future__ import annotations

import argparse

HELP = ("Write a multi-channel nnU-Net raw dataset from per-case perfusion maps (CBF, CBV, TTP, Tmax, optional MIP; "
        "grey-scale, one grid) and core/penumbra labels (0 background, 1 penumbra, 2 core).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_ssl.cli.raw_options import add_raw_dataset_arguments

    parser.add_argument("input", metavar="INPUT",
                        help="folder with CBF/, CBV/, TTP/, Tmax/, optionally MIP/, and labels/ sub-folders "
                             "(CASE.nii.gz, .nrrd, .npy ...), or a CSV with columns case,CBF,CBV,TTP,Tmax[,MIP],label")
    parser.add_argument("output", metavar="OUTPUT_DATASET", help="new dataset folder, e.g. $nnUNet_raw/Dataset640_CTP")
    parser.add_argument("--regions", action="store_true",
                        help="region-based labels: hypoperfused = (1, 2), core = (2,), with regions_class_order")
    add_raw_dataset_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.cli.raw_options import npy_spacing
    from nnunet_ssl.ctp_dataset import write_ctp_dataset

    summary = write_ctp_dataset(args.input, args.output, regions=args.regions, npy_spacing=npy_spacing(args),
                                overwrite=args.overwrite, progress=not args.no_progress)
    order = ", ".join(f"{i} = {name}" for i, name in summary.channels.items())
    print(f"Wrote {summary.output}: {len(summary.cases)} case(s), channels {order}"
          + (", region-based labels (hypoperfused, core)" if args.regions else ", labels penumbra 1, core 2"))
    return 0
