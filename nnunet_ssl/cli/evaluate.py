"""``nnunet-ssl evaluate``: per-case Dice, HD95, volume difference and lesion counts, with a summary."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Evaluate predicted label maps against references: Dice, HD95, volume difference, ICC, Spearman."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred_dir", metavar="PRED_DIR", type=Path, help="folder of predicted label maps")
    parser.add_argument("gt_dir", metavar="GT_DIR", type=Path,
                        help="folder of reference label maps with the same file names (e.g. labelsTr); "
                             "never written to")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                        help="folder for evaluation_per_case.csv and evaluation_summary.json "
                             "(default: PRED_DIR); these two files are replaced if present")
    parser.add_argument("--min-lesion-ml", type=float, default=0.0, metavar="ML",
                        help="remove connected lesions smaller than ML millilitres from the ground truth "
                             "before scoring (e.g. 3 for the '> 3 mL' scenario; default 0: keep all)")
    parser.add_argument("--filter-prediction", action="store_true",
                        help="apply --min-lesion-ml to the prediction too")
    parser.add_argument("--labels", type=int, nargs="+", default=None, metavar="L",
                        help="foreground labels to evaluate (default: every label found)")
    parser.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=26,
                        help="voxel neighbourhood that makes lesions connected (default: 26)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="evaluate only the cases that have a prediction instead of stopping when "
                             "some ground-truth cases have none (they are listed in the summary)")
    parser.add_argument("-fe", "--file-ending", default=".nii.gz",
                        help="ending of the label map files (default: .nii.gz)")
    parser.add_argument("-j", "--num-processes", type=int, default=1, metavar="N",
                        help="cases evaluated in parallel (default: 1)")


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.errors import UserError
    from nnunet_ssl.evaluation.folder import Settings, evaluate_folder, write_outputs

    if args.min_lesion_ml < 0:
        raise UserError(f"--min-lesion-ml must be 0 or more, got {args.min_lesion_ml}.")
    if args.num_processes < 1:
        raise UserError(f"-j/--num-processes must be 1 or more, got {args.num_processes}.")
    if args.labels is not None and any(label <= 0 for label in args.labels):
        raise UserError("--labels takes foreground labels (1, 2, ...); 0 is the background.")
    if args.filter_prediction and args.min_lesion_ml == 0:
        raise UserError("--filter-prediction needs --min-lesion-ml (the size below which lesions are removed).")
    out_dir = args.output if args.output is not None else args.pred_dir
    if args.gt_dir.exists() and _inside(out_dir, args.gt_dir):
        raise UserError(f"The output folder {out_dir} is inside the ground-truth folder {args.gt_dir}; "
                        "choose another with -o so that the references stay untouched.")

    settings = Settings(labels=tuple(sorted(set(args.labels))) if args.labels else None,
                        min_lesion_ml=args.min_lesion_ml, filter_prediction=args.filter_prediction,
                        connectivity=args.connectivity)
    rows, summary = evaluate_folder(args.pred_dir, args.gt_dir, settings, file_ending=args.file_ending,
                                    num_processes=args.num_processes, allow_missing=args.allow_missing)
    csv_path, json_path = write_outputs(out_dir, rows, summary)

    missing = summary["settings"]["cases_without_prediction"]
    if missing:
        print(f"Skipped {len(missing)} ground-truth case(s) without a prediction (--allow-missing).")
    print(f"Evaluated {summary['settings']['n_cases']} case(s)"
          + (f", lesions under {args.min_lesion_ml:g} mL removed from the ground truth"
             + (" and the prediction" if args.filter_prediction else "") if args.min_lesion_ml else "") + ".")
    for warning in summary["warnings"]:
        print(f"Warning: {warning}")
    for label, s in summary["labels"].items():
        if s["absent_everywhere"]:
            print(f"Label {label}: in no file; Dice and HD95 undefined")
            continue
        m, v = s["metrics"], s["volume_agreement"]
        dice = m["dice"]
        print(f"Label {label}: Dice median {dice['median']:.3f} (IQR {dice['q1']:.3f}-{dice['q3']:.3f}), "
              f"HD95 median {m['hd95_mm']['median']:.2f} mm ({m['hd95_mm']['n_nan']} undefined), "
              f"AVD median {m['avd_ml']['median']:.2f} mL, volume Spearman {v['spearman_rho']:.3f}, "
              f"ICC(3,1) {v['icc_3_1']:.3f}")
    print(f"Wrote {csv_path} and {json_path}")
    return 0
