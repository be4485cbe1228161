"""``nnunet-ssl prepare-aspects``: an ASPECTS-zone atlas registered to every CT, as an nnU-Net raw dataset."""
from __future__ import annotations

import argparse

from nnunet_ssl.errors import UserError

HELP = ("Register an ASPECTS-zone atlas (template CT + zone map; default: a synthetic phantom atlas for tests and "
        "demos) to every CT (affine + B-spline), and write the zones as an nnU-Net raw dataset for the zone "
        "segmentation pretext task, with a QC picture per case and a registration report; badly registered "
        "cases are reported and left out.")
DEFAULT_MIN_BRAIN_DICE = 0.85  # nnunet_ssl.prepare_aspects.DEFAULT_MIN_BRAIN_DICE, here so that --help stays light


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT",
                        help="an nnU-Net raw dataset of CTs (e.g. from prepare-ssl; channel 0) or a folder with one CT per case (.nii.gz/.nrrd/.mha or DICOM folder). "
                             "Never modified.")
    parser.add_argument("output", metavar="OUTPUT_DATASET",
                        help="new dataset folder, e.g. $nnUNet_raw/Dataset510_ASPECTS")
    parser.add_argument("--atlas-template", metavar="FILE", default=None,
                        help="the atlas's template head CT in HU (any space)")
    parser.add_argument("--atlas-zones", metavar="FILE", default=None,
                        help="the atlas's zone map on the template's grid: 1-10 left caudate, lentiform, internal "
                             "capsule, insula, M1-M6; 11-20 the same on the right")
    parser.add_argument("--atlas-brain", metavar="FILE", default=None,
                        help="the template's brain mask (default: computed with the CT brain mask)")
    parser.add_argument("--synthetic-atlas-shape", nargs=3, type=int, default=None, metavar=("Z", "Y", "X"),
                        help="without --atlas-template: voxels (1 mm) of the synthetic phantom atlas (default: "
                             "48 64 64, the phantoms' default); match it to phantoms of another size")
    parser.add_argument("--min-brain-dice", type=float, default=DEFAULT_MIN_BRAIN_DICE, metavar="D",
                        help="cases whose registered atlas brain overlaps the CT's brain mask less (Dice) are "
                             f"reported as failed and not written (default: {DEFAULT_MIN_BRAIN_DICE})")
    parser.add_argument("--brain-mask", choices=["builtin", "auto", "synthstrip", "hdbet"], default="builtin",
                        help="brain extraction of the CTs (and of the template without --atlas-brain) for the "
                             "registration check (default: builtin)")
    parser.add_argument("--flip-to-side", choices=["left", "right"], default=None,
                        help="mirror left-right (swapping left and right zone labels) every case whose lesion is "
                             "on the other side, so that all lesions lie on this side; needs --lesion-sides")
    parser.add_argument("--lesion-sides", metavar="TABLE", default=None,
                        help="CSV or TSV with columns case,side (left, right or none) for --flip-to-side")
    parser.add_argument("--bspline-mesh-mm", type=float, default=None, metavar="MM",
                        help="control-point spacing of the B-spline stage (default: 25 mm; larger is smoother)")
    parser.add_argument("--bspline-iterations", type=int, default=None, metavar="N",
                        help="iterations per level of the B-spline stage (default: 30; 0: affine only)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="cases registered in parallel (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from nnunet_ssl.atlas import load_atlas
    from nnunet_ssl.prepare_aspects import QC_FOLDER, REPORT_TSV, AspectsOptions, prepare_aspects_dataset

    if (args.atlas_template is None) != (args.atlas_zones is None):
        raise UserError("--atlas-template and --atlas-zones go together (the template CT and its zone map); "
                        "without both the synthetic phantom atlas is used")
    if args.synthetic_atlas_shape and args.atlas_template:
        raise UserError("--synthetic-atlas-shape is for the synthetic atlas; it cannot go with --atlas-template")
    if args.atlas_brain and not args.atlas_template:
        raise UserError("--atlas-brain needs --atlas-template and --atlas-zones")
    registration = AspectsOptions().registration
    if args.bspline_mesh_mm is not None:
        if args.bspline_mesh_mm <= 0:
            raise UserError(f"--bspline-mesh-mm must be positive, got {args.bspline_mesh_mm}")
        registration = replace(registration, bspline_mesh_mm=args.bspline_mesh_mm)
    if args.bspline_iterations is not None:
        if args.bspline_iterations < 0:
            raise UserError(f"--bspline-iterations must be 0 or more, got {args.bspline_iterations}")
        registration = replace(registration, bspline_iterations=args.bspline_iterations)
    options = AspectsOptions(args.min_brain_dice, args.brain_mask, args.flip_to_side, registration)
    atlas, files = None, ()
    if args.atlas_template:
        files = tuple(f for f in (args.atlas_template, args.atlas_zones, args.atlas_brain) if f)
        atlas = load_atlas(args.atlas_template, args.atlas_zones, args.atlas_brain, args.brain_mask)
    else:
        from nnunet_ssl.atlas import SYNTHETIC_SHAPE, synthetic_atlas

        shape = tuple(args.synthetic_atlas_shape or SYNTHETIC_SHAPE)
        if min(shape) < 16:
            raise UserError(f"--synthetic-atlas-shape needs at least 16 voxels per axis, got {list(shape)}")
        atlas = synthetic_atlas(shape)
        print("No --atlas-template/--atlas-zones: using the synthetic phantom atlas (for tests and demonstrations; "
              "real CT needs a real atlas, see docs/aspects.md)")
    summary = prepare_aspects_dataset(args.input, args.output, atlas, options, args.lesion_sides,
                                      overwrite=args.overwrite, progress=not args.no_progress, atlas_files=files,
                                      jobs=args.jobs)
    print(f"Wrote {summary.output}: {len(summary.written)} case(s), {len(summary.failed)} failed (report in "
          f"{summary.output / REPORT_TSV}, QC pictures in {summary.output / QC_FOLDER})")
    for case in summary.failed[:5]:
        print(f"  failed {case.case}: {case.reason}")
    return 0
