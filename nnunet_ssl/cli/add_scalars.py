"""``nnunet-ssl add-scalars``: clinical scalars from a CSV as extra input channels of a new raw dataset."""
from __future__ import annotations

import argparse

HELP = ("Copy an nnU-Net raw dataset and add one input channel per clinical scalar of a CSV (e.g. NIHSS), "
        "holding the case's value; the input is never modified.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT_DATASET", help="nnU-Net raw dataset folder (only read)")
    parser.add_argument("csv", metavar="CSV", help="one row per case: a case identifier column and scalar columns")
    parser.add_argument("output", metavar="OUTPUT_DATASET",
                        help="new dataset folder, e.g. $nnUNet_raw/Dataset512_StrokeNIHSS")
    parser.add_argument("--case-column", default=None, help="column of the case identifiers (default: the first)")
    parser.add_argument("--columns", nargs="+", default=None, metavar="COLUMN",
                        help="scalar columns, one channel each in this order (default: all other columns)")
    parser.add_argument("--range", action="append", default=[], metavar="COLUMN=LOW:HIGH", dest="ranges",
                        help="map the column's clinical range to 0..1 and refuse values outside it, e.g. "
                             "NIHSS=0:42 (repeatable); columns without one are written as they are")
    parser.add_argument("--whole-image", action="store_true",
                        help="write the value in every voxel; by default it fills the region nnU-Net crops "
                             "to (where any image channel is nonzero) and is 0 outside")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.errors import UserError
    from nnunet_ssl.scalar_channels import VALUES_FILE, add_scalar_channels, parse_range

    ranges = dict(parse_range(r) for r in args.ranges)
    if len(ranges) != len(args.ranges):
        raise UserError("--range is given twice for one column")
    summary = add_scalar_channels(args.input, args.csv, args.output, args.columns, args.case_column, ranges,
                                  whole_image=args.whole_image, overwrite=args.overwrite,
                                  progress=not args.no_progress)
    added = ", ".join(f"{i} = {col}" + (f" (range {ranges[col][0]:g}..{ranges[col][1]:g} -> 0..1)" if col in ranges
                                          else "") for i, col in summary.channels.items())
    print(f"Wrote {summary.output}: {len(summary.cases)} case(s), new channel(s) {added}, normalisation noNorm; "
          f"values in {summary.output / VALUES_FILE}")
    if summary.unused_rows:
        shown = ", ".join(summary.unused_rows[:10]) + (" ..." if len(summary.unused_rows) > 10 else "")
        print(f"{len(summary.unused_rows)} CSV row(s) match no case of the dataset and were not used: {shown}")
    return 0
