"""``nnunet-ssl ctp-dataset``: CT perfusion parametric maps as channels of a new nnU-Net raw dataset."""
from __future__ import annotations

import argparse

HELP = ("Write a multi-channel nnU-Net raw dataset from per-case perfusion maps (CBF, CBV, TTP, Tmax, optional MIP; "
        "grey-scale, or colour-coded with a colour table; one grid) and core/penumbra labels (0 background, 1 penumbra, 2 core).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_ssl.cli.raw_options import add_raw_dataset_arguments

    parser.add_argument("input", metavar="INPUT",
                        help="folder with CBF/, CBV/, TTP/, Tmax/, optionally MIP/, and labels/ sub-folders "
                             "(CASE.nii.gz, .nrrd, .npy ...), or a CSV with columns case,CBF,CBV,TTP,Tmax[,MIP],label")
    parser.add_argument("output", metavar="OUTPUT_DATASET", help="new dataset folder, e.g. $nnUNet_raw/Dataset640_CTP")
    parser.add_argument("--regions", action="store_true",
                        help="region-based labels: hypoperfused = (1, 2), core = (2,), with regions_class_order")
    parser.add_argument("--colour-table", action="append", default=[], metavar="MAP=TABLE.csv",
                        help="the map is an RGB volume drawn with this colour bar (CSV value,r,g,b, r/g/b 0..255): "
                             "each voxel gets the value of the nearest colour; repeatable, one per colour-coded map")
    parser.add_argument("--colour-distance", type=float, default=30.0, metavar="D",
                        help="voxels farther than D (RGB units) from every colour of the table count as not on "
                             "the colour bar and get the table's lowest value [30]")
    add_raw_dataset_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.cli.raw_options import npy_spacing
    from nnunet_ssl.ctp_dataset import write_ctp_dataset

    from nnunet_ssl.errors import UserError

    tables = {}
    for item in args.colour_table:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--colour-table expects MAP=TABLE.csv, got {item!r}")
        if name in tables:
            raise UserError(f"--colour-table given twice for {name}")
        tables[name] = path
    summary = write_ctp_dataset(args.input, args.output, regions=args.regions, npy_spacing=npy_spacing(args),
                                overwrite=args.overwrite, progress=not args.no_progress, colour_tables=tables,
                                max_colour_distance=args.colour_distance)
    for name, fractions in summary.unmatched.items():
        worst = max(fractions, key=fractions.get)
        print(f"{name}: colours read with its table; voxels off the colour bar: at most {fractions[worst]:.1%} "
              f"(case {worst})")
        if fractions[worst] > 0.5:
            print(f"WARNING: more than half of case {worst}'s {name} voxels match no colour of the table; "
                  "check that the table is the package's colour bar")
    order = ", ".join(f"{i} = {name}" for i, name in summary.channels.items())
    print(f"Wrote {summary.output}: {len(summary.cases)} case(s), channels {order}"
          + (", region-based labels (hypoperfused, core)" if args.regions else ", labels penumbra 1, core 2"))
    return 0
