"""``nnunet-ssl preprocess-ct``: homogenise head NCCT into an nnU-Net raw dataset."""
from __future__ import annotations

import argparse

HELP = ("Preprocess head NCCT (resample, skull strip, contralateral/difference image, clip, "
        "optional MRI label propagation) into an nnU-Net raw dataset.")


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. -100,400), got {text!r}") from None
    if lo >= hi:
        raise argparse.ArgumentTypeError(f"LOW must be below HIGH, got {text!r}")
    return lo, hi


def _spacing(text: str) -> tuple[float, float, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MM or X,Y,Z in mm, got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected one or three positive numbers, got {text!r}")
    return values[0], values[1], values[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input_dir", metavar="INPUT_DIR",
                        help="folder with one CT per case: .nii.gz/.nii/.nrrd/.mha files or DICOM series "
                             "folders; the case id is the file name (an nnU-Net _0000 suffix is dropped)")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR",
                        help="nnU-Net raw dataset folder to write, e.g. $nnUNet_raw/Dataset501_NCCT")
    parser.add_argument("--channels", choices=["ct", "ct+diff", "ct+contra"], default="ct",
                        help="ct: CT only; ct+diff: CT and difference image (segmentation); "
                             "ct+contra: CT and contralateral image (symmetry augmentation in "
                             "pretraining) (default: ct)")
    parser.add_argument("--labels", metavar="DIR",
                        help="lesion masks matched by case id, in CT space (or in MRI space with --mri)")
    parser.add_argument("--mri", metavar="DIR",
                        help="paired MRIs (e.g. DWI/ADC) the --labels were drawn on; each is registered "
                             "to its CT and the mask is moved with it")
    parser.add_argument("--max-label", type=int, default=1, metavar="K",
                        help="largest label value in the --labels masks: labels are 0 (background), 1 (lesion) "
                             "and, with K > 1, classes 2..K; a case with other values fails (default: 1)")
    parser.add_argument("--brain-label", action="store_true",
                        help="without --labels: write each case's brain mask as its label (for SSL "
                             "datasets, so that nnU-Net takes CT statistics from the brain)")
    parser.add_argument("--spacing", type=_spacing, default=(1.0, 1.0, 1.0), metavar="MM",
                        help="output spacing in mm: one number or X,Y,Z (default: 1)")
    parser.add_argument("--orientation", default="LPS",
                        help="axis order of the outputs (only permutes and flips axes; 'keep' keeps each "
                             "input's) (default: LPS)")
    parser.add_argument("--brain-mask", choices=["auto", "builtin", "synthstrip", "hdbet"], default="auto",
                        help="brain extraction: auto uses SynthStrip (mri_synthstrip) when on the PATH, "
                             "else the built-in CT method (default: auto)")
    parser.add_argument("--clip", type=_pair, default=(-100.0, 400.0), metavar="LOW,HIGH",
                        help="HU range of the CT and contralateral image (default: -100,400)")
    parser.add_argument("--mirror-transform", choices=["rigid", "affine"], default="rigid",
                        help="registration of the image to its mirror image (default: rigid)")
    parser.add_argument("--keep-head", action="store_true",
                        help="do not set voxels outside the brain to --background")
    parser.add_argument("--background", type=float, default=0.0, metavar="HU",
                        help="value outside the brain in skull-stripped outputs (default: 0)")
    parser.add_argument("--min-similarity", type=float, default=0.5,
                        help="least image/contralateral correlation of a successful mirror "
                             "registration (default: 0.5)")
    parser.add_argument("--max-plane-angle", type=float, default=30.0, metavar="DEG",
                        help="largest plausible tilt of the mid-sagittal plane (default: 30)")
    parser.add_argument("--no-hu-check", action="store_true",
                        help="accept images that do not look like CT in Hounsfield units")
    parser.add_argument("--no-qc", action="store_true", help="do not write QC pictures")
    parser.add_argument("--name", help="dataset name in dataset.json (default: the output folder's name)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="cases processed in parallel (default: 1)")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove the entries preprocess-ct writes in OUTPUT_DIR (the dataset's "
                             "imagesTr, labelsTr and dataset.json, and its own side files) and redo every "
                             "case; other files there are kept. Without it, a run resumes the folder's own "
                             "earlier run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from nnunet_ssl.ct.brain_mask import resolve_method
    from nnunet_ssl.ct.dataset import REPORT_NAME, run_dataset
    from nnunet_ssl.ct.pipeline import PreprocessConfig
    from nnunet_ssl.ct.resample import parse_orientation
    from nnunet_ssl.errors import UserError

    if args.jobs < 1:
        raise UserError(f"-j/--jobs must be at least 1, got {args.jobs}")
    if args.max_label < 1:
        raise UserError(f"--max-label must be at least 1, got {args.max_label}")
    config = PreprocessConfig(
        channels=args.channels, spacing=tuple(args.spacing), brain_method=resolve_method(args.brain_mask),
        orientation=parse_orientation(args.orientation), max_label=args.max_label,
        clip=tuple(args.clip), mirror_transform=args.mirror_transform, skull_strip=not args.keep_head,
        background_hu=args.background, min_similarity=args.min_similarity,
        max_plane_angle_deg=args.max_plane_angle, check_hu=not args.no_hu_check, qc=not args.no_qc)
    rows = run_dataset(args.input_dir, args.output_dir, config, labels_dir=args.labels, mri_dir=args.mri,
                       jobs=args.jobs, overwrite=args.overwrite, progress=not args.no_progress,
                       dataset_name=args.name, brain_label=args.brain_label)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
    print(f"{counts['ok']} processed, {counts['skipped']} skipped (already done), {counts['failed']} failed; "
          f"brain mask: {config.brain_method}; report: {args.output_dir}/{REPORT_NAME}")
    for r in rows:
        if r["status"] == "failed":
            print(f"  failed {r['case']}: {r['reason']}")
    return 1 if counts["failed"] else 0
