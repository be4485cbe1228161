"""``nnunet-ssl split``: stratified train/validation/test split written as nnU-Net's splits_final.json."""
from __future__ import annotations

import argparse

HELP = ("Write splits_final.json (train/val, fold 0) and a held-out test list, stratified per source by "
        "lesion side and lesion volume (default 70/20/10 per source).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True, help="labelled dataset id or name in nnUNet_raw")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="held-out test cases per source (0.1)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="validation cases per source (0.2)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the split (default: 12345)")
    parser.add_argument("--sources", default=None, metavar="CSV",
                        help="CSV with columns case_id,source (default: the dataset's manifest.csv if "
                             "present, else one source)")
    parser.add_argument("--volume-bins", type=int, default=3,
                        help="lesion volume bins, by quantiles over the lesioned cases (default: 3)")
    parser.add_argument("--min-side-fraction", type=float, default=0.1,
                        help="share of the lesion volume that makes a hemisphere count (default: 0.1); "
                             "lesions with both sides above it are 'both'")
    parser.add_argument("--force", action="store_true", help="replace existing split files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nnunet_ssl.splits import STRATA_FILE, TEST_FILE, counts_by, make_split, summary_table

    cases, out = make_split(args.dataset, args.test_fraction, args.val_fraction, args.seed,
                            Path(args.sources) if args.sources else None, args.volume_bins,
                            args.min_side_fraction, force=args.force, progress=not args.no_progress)
    print(summary_table(cases))
    for source, counts in sorted(counts_by(cases, "source").items()):
        print(f"  source {source}: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("train", "val", "test")))
    test = sorted(c.case_id for c in cases if c.subset == "test")
    print(f"Wrote {out / 'splits_final.json'} (fold 0), {out / TEST_FILE} and {out / STRATA_FILE}")
    print(f"Held-out test cases ({len(test)}): {' '.join(test) if test else '(none)'}")
    return 0
