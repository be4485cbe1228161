"""``nnunet-ssl compare``: paired statistical comparison of evaluation runs, with a Markdown report."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Compare evaluation runs case by case: Wilcoxon tests, effect sizes, table, box plots, report.md."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", metavar="RUN", type=Path, nargs="+",
                        help="an output folder of `nnunet-ssl evaluate` or its evaluation_per_case.csv (two or more)")
    parser.add_argument("-o", "--output", type=Path, default=Path("comparison"), metavar="DIR",
                        help="folder for report.md, the tables and the figures (default: ./comparison); "
                             "files of an earlier comparison there are replaced")
    parser.add_argument("--names", nargs="+", default=None, metavar="NAME",
                        help="one display name per run (default: the folder names)")


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.errors import UserError
    from nnunet_ssl.evaluation.compare import compare_runs, default_names, load_run
    from nnunet_ssl.evaluation.report import write_report

    if len(args.runs) < 2:
        raise UserError("compare needs at least two runs (evaluation folders or per-case CSV files).")
    if args.names is not None:
        if len(args.names) != len(args.runs):
            raise UserError(f"--names got {len(args.names)} name(s) for {len(args.runs)} run(s); give one per run.")
        if len(set(args.names)) != len(args.names):
            raise UserError("--names must be different from each other.")
    names = args.names or default_names(args.runs)
    runs = [load_run(path, name) for path, name in zip(args.runs, names)]
    comp = compare_runs(runs)
    paths = write_report(comp, args.output)

    for w in comp.warnings:
        print(f"Warning: {w}")
    for label in comp.labels:
        dropped = ", ".join(f"{k}: {v}" for k, v in comp.dropped[label].items())
        print(f"Label {label}: {len(comp.shared[label])} shared case(s); dropped {dropped}")
        for t in (t for t in comp.tests if t["label"] == label and t["metric"] == "dice"):
            print(f"  Dice {t['run_a']} vs {t['run_b']}: Wilcoxon p = {t['p_wilcoxon']:.4g} ({t['mark']}), "
                  f"rank-biserial r = {t['rank_biserial']:.2f}")
    print(f"Wrote {paths['report']}")
    return 0
