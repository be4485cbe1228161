"""The ASPECTS-zone pretext task: register a zone atlas to every unlabelled CT and write a segmentation dataset.

Per case the atlas template is registered to the CT (affine, then B-spline:
:func:`nnunet_ssl.registration.register_atlas`), the zone map follows with nearest
neighbour. How well the registration went
is measured by the Dice overlap of the CT's brain mask (computed with the project's CT
brain mask) and the registered
atlas brain. Cases below ``min_brain_dice`` are reported as failed and not written, as
are cases that cannot be read, are not a head CT in HU, or have no brain.

Optionally every case whose lesion lies on the other side than ``flip_to`` is mirrored
left-right (image and zones, the zone labels swapped), so that all lesions are on one side.

The output is a stock nnU-Net raw dataset (``imagesTr``, ``labelsTr``, ``dataset.json`` with
the 20 zone labels), a QC picture per registered case in ``qc/`` and the registration
report ``aspects_report.tsv`` / ``aspects_report.json``. Train it with stock
``nnUNetv2_train`` (the pretext task), then fine-tune on lesions from its checkpoint
(``nnunet-ssl-transfer``).

Example:
    >>> prepare_aspects_dataset("nnUNet_raw/Dataset500_HeadCT", "nnUNet_raw/Dataset510_Zones")  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.atlas import RIGHT_OFFSET, Atlas, label_names, swap_sides
from nnunet_ssl.errors import UserError
from nnunet_ssl.registration import AtlasRegistrationSettings

REPORT_TSV = "aspects_report.tsv"
REPORT_JSON = "aspects_report.json"
QC_FOLDER = "qc"
REPORT_COLUMNS = ("case", "status", "brain_dice", "mutual_information", "flipped", "reason", "source")
DEFAULT_MIN_BRAIN_DICE = 0.85
SIDE_VALUES = ("left", "right", "none")


@dataclass(frozen=True)
class AspectsOptions:
    """How cases are registered, checked and written.

    Attributes:
        min_brain_dice: Cases whose registered atlas brain overlaps the CT's brain mask less
            (Dice) are failed and not written.
        brain_mask_method: Method of :func:`nnunet_ssl.ct.brain_mask.brain_mask` for the CTs' brain
            masks (use the one the atlas brain was made with).
        flip_to: ``"left"`` or ``"right"``: mirror cases whose lesion side (``sides``) is the other one.
        registration: Settings of :func:`nnunet_ssl.registration.register_atlas`.
    """

    min_brain_dice: float = DEFAULT_MIN_BRAIN_DICE
    brain_mask_method: str = "builtin"
    flip_to: Optional[str] = None
    registration: AtlasRegistrationSettings = AtlasRegistrationSettings()


@dataclass
class CaseReport:
    case: str
    source: str
    status: str = "failed"
    brain_dice: Optional[float] = None
    mutual_information: Optional[float] = None
    flipped: bool = False
    reason: str = ""


@dataclass
class AspectsSummary:
    output: Path
    cases: list[CaseReport] = field(default_factory=list)

    @property
    def written(self) -> list[CaseReport]:
        return [c for c in self.cases if c.status == "written"]

    @property
    def failed(self) -> list[CaseReport]:
        return [c for c in self.cases if c.status != "written"]


def find_inputs(source: Path) -> dict[str, Path]:
    """``{case: CT file}`` of an nnU-Net raw dataset (its channel-0 ``imagesTr``) or a folder of CTs.

    The CTs' brain masks are always computed, even where a dataset's labels are brain masks: the
    registration check compares them with the atlas brain, which is made with the same method.
    """
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from nnunet_ssl.ct.io import find_cases

    if not source.is_dir():
        raise UserError(f"input {source} does not exist or is not a folder; give an nnU-Net raw dataset "
                        "(e.g. one written by nnunet-ssl prepare-ssl) or a folder of CTs")
    if not (source / "dataset.json").is_file():
        return find_cases(source)
    try:
        dataset_json = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
        ending = dataset_json["file_ending"]
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"cannot read {source / 'dataset.json'} (it needs file_ending): {e}") from None
    files = {}
    if "dataset" in dataset_json or (source / "imagesTr").is_dir():
        files = get_filenames_of_train_images_and_targets(str(source), dataset_json)
    if not files:
        raise UserError(f"dataset {source} has no imagesTr/CASE_0000{ending}")
    return {case: Path(entry["images"][0]) for case, entry in sorted(files.items())}


def read_sides(path: Path, cases) -> dict[str, str]:
    """The lesion side of every case from a CSV/TSV with columns ``case`` and ``side`` (left, right, none)."""
    if not path.is_file():
        raise UserError(f"lesion-side table {path} does not exist")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    dialect = "excel-tab" if lines and "\t" in lines[0] else "excel"
    reader = csv.DictReader(lines, dialect=dialect)
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    rows = list(reader)
    if "case" not in header or "side" not in header:
        raise UserError(f"lesion-side table {path} needs columns 'case' and 'side' (left, right or none); "
                        f"it has {header}")
    sides = {}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        side = row["side"].lower()
        if side not in SIDE_VALUES:
            raise UserError(f"lesion-side table {path}, line {line}: side {row['side']!r} for case "
                            f"'{row['case']}'; use {', '.join(SIDE_VALUES)}")
        sides[row["case"]] = side
    missing = [c for c in cases if c not in sides]
    if missing:
        raise UserError(f"lesion-side table {path} has no row for case '{missing[0]}' ({len(missing)} case(s) "
                        "missing); give every case a side (none: not mirrored)")
    return sides


def mirror_left_right(image: sitk.Image, zones: bool = False) -> sitk.Image:
    """Mirror an LPS-oriented image along its x (left-right) axis; zone maps get their sides swapped."""
    array = sitk.GetArrayFromImage(image)[..., ::-1]
    if zones:
        array = swap_sides(array)
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.CopyInformation(image)
    return out


def process_case(case: str, ct_path: Path, atlas: Atlas, options: AspectsOptions, side: Optional[str],
                 work: Path) -> CaseReport:
    """Register, check, (mirror) and write one case; a bad case is reported, never raised."""
    from nnunet_ssl.ct.brain_mask import brain_mask
    from nnunet_ssl.ct.io import CaseError, check_ct_hu, check_volume, read_image, write_image
    from nnunet_ssl.registration import dice, register_atlas, warp_labels

    report = CaseReport(case, str(ct_path))
    try:
        ct = sitk.DICOMOrient(read_image(ct_path, sitk.sitkFloat32), "LPS")  # axes permuted only
        check_volume(ct, ct_path.name)
        values = sitk.GetArrayViewFromImage(ct)
        if float(values.max()) == float(values.min()):
            raise CaseError(f"constant image (every voxel {float(values.min()):g}): not a head CT")
        check_ct_hu(ct)
        brain = brain_mask(ct, method=options.brain_mask_method, min_volume_ml=0.0, max_volume_ml=float("inf"))
        if not sitk.GetArrayViewFromImage(brain).any():
            raise CaseError("no brain found in the image (empty brain mask): not a head CT?")
        result = register_atlas(ct, atlas.template, brain, atlas.brain, case, options.registration)
        atlas_brain = warp_labels(atlas.brain, ct, result.transform)
        report.brain_dice = round(dice(brain, atlas_brain), 4)
        report.mutual_information = round(-result.metric, 4)
        zones = warp_labels(atlas.zones, ct, result.transform)
        _save_qc(work / QC_FOLDER / f"{case}.png", ct, brain, atlas_brain, zones, report, options.min_brain_dice)
        if report.brain_dice < options.min_brain_dice:
            raise CaseError(f"registration failed: brain Dice {report.brain_dice:.3f} below "
                            f"{options.min_brain_dice:g} (--min-brain-dice); see {QC_FOLDER}/{case}.png")
        if options.flip_to and side in ("left", "right") and side != options.flip_to:
            ct, zones, report.flipped = mirror_left_right(ct), mirror_left_right(zones, zones=True), True
        arr = sitk.GetArrayViewFromImage(ct)
        integral = np.array_equal(arr, np.round(arr)) and arr.min() >= -32768 and arr.max() <= 32767
        write_image(ct, work / "imagesTr" / f"{case}_0000.nii.gz", sitk.sitkInt16 if integral else sitk.sitkFloat32)
        write_image(zones, work / "labelsTr" / f"{case}.nii.gz", sitk.sitkUInt8)
        report.status = "written"
    except (CaseError, UserError) as e:
        report.reason = str(e).replace(f"case '{case}': ", "")
    except Exception as e:  # one odd file must not stop a run over many cases
        report.reason = f"unexpected {type(e).__name__}: {e}".strip()
    return report


def _save_qc(path: Path, ct: sitk.Image, brain: sitk.Image, atlas_brain: sitk.Image, zones: sitk.Image,
             report: CaseReport, threshold: float, window: tuple[float, float] = (0.0, 80.0)) -> None:
    """Two axial slices (the ganglionic and the supraganglionic level, as ASPECTS reads them): the CT with
    the zones in colour, the CT's brain outline (red) and the registered atlas brain (yellow).
    Radiological view (patient's left on the viewer's right), as :mod:`nnunet_ssl.ct.qc`."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    ct_a = sitk.GetArrayFromImage(ct)  # LPS-oriented: rows anterior -> posterior, columns right -> left
    zones_a, brain_a, atlas_a = (sitk.GetArrayFromImage(i) for i in (zones, brain, atlas_brain))
    deep = ((zones_a % RIGHT_OFFSET >= 1) & (zones_a % RIGHT_OFFSET <= 7) & (zones_a > 0)).sum(axis=(1, 2))
    high = ((zones_a % RIGHT_OFFSET >= 8) | ((zones_a > 0) & (zones_a % RIGHT_OFFSET == 0))).sum(axis=(1, 2))
    levels = [int(np.argmax(c)) if c.any() else ct_a.shape[0] // 2 for c in (deep, high)]
    colours = colormaps["tab20"]
    fig = Figure(figsize=(6.4, 3.6), dpi=80)
    axes = fig.subplots(1, 2)
    for ax, k, name in zip(axes, levels, ("ganglionic level (C, L, IC, I, M1-M3)", "supraganglionic (M4-M6)")):
        ax.imshow(ct_a[k], cmap="gray", vmin=window[0], vmax=window[1])
        ax.imshow(np.ma.masked_where(zones_a[k] == 0, zones_a[k]), cmap=colours, vmin=0.5, vmax=20.5,
                  alpha=0.55, interpolation="none")
        for mask, colour in ((brain_a, "red"), (atlas_a, "yellow")):
            if mask[k].any():
                ax.contour(mask[k].astype(float), levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title(f"{name}, slice {k}", fontsize=7)
        ax.set_axis_off()
    verdict = "ok" if report.brain_dice is not None and report.brain_dice >= threshold else "FAILED"
    fig.suptitle(f"{report.case}: brain Dice {report.brain_dice:.3f} ({verdict}); red CT brain, yellow atlas",
                 fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))


def write_report(folder: Path, summary: AspectsSummary, atlas: Atlas, options: AspectsOptions) -> None:
    rows = [asdict(c) for c in summary.cases]
    with open(folder / REPORT_TSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(REPORT_COLUMNS), delimiter="\t", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in REPORT_COLUMNS})
    settings = {**asdict(options), "registration": asdict(options.registration)}
    (folder / REPORT_JSON).write_text(json.dumps({"atlas": atlas.description, "settings": settings,
                                                  "written": len(summary.written), "failed": len(summary.failed),
                                                  "cases": rows}, indent=2), encoding="utf-8")


def prepare_aspects_dataset(source: Path | str, output_folder: Path | str, atlas: Optional[Atlas] = None,
                            options: AspectsOptions = AspectsOptions(), sides_table: Optional[Path | str] = None,
                            overwrite: bool = False, progress: bool = True, dataset_name: Optional[str] = None,
                            atlas_files: tuple = (), jobs: int = 1) -> AspectsSummary:
    """Register the zone atlas to every CT of ``source`` and write the ASPECTS-zone raw dataset.

    Args:
        source: An nnU-Net raw dataset (e.g. from ``prepare-ssl``; channel 0) or a folder with one CT per case.
        output_folder: The new dataset, e.g. ``$nnUNet_raw/Dataset510_ASPECTS``.
        atlas: The atlas (:func:`nnunet_ssl.atlas.load_atlas`); default :func:`nnunet_ssl.atlas.synthetic_atlas`.
        options: Thresholds, brain mask method, flipping, registration settings.
        sides_table: CSV/TSV ``case,side`` (left/right/none), needed with ``options.flip_to``.
        overwrite: Replace an existing output.
        progress: Show a progress bar.
        dataset_name: ``name`` in ``dataset.json`` (default: the output folder's name).
        atlas_files: The atlas's files, so that the output may not overlap them.
        jobs: Cases registered in parallel (worker processes, one thread each).

    Returns:
        An :class:`AspectsSummary`: one :class:`CaseReport` per input case.

    Raises:
        UserError: Bad arguments, an existing output without ``overwrite``, or no case registered well.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from tqdm import tqdm

    from nnunet_ssl.atlas import synthetic_atlas
    from nnunet_ssl.ct.brain_mask import resolve_method
    from nnunet_ssl.raw_dataset import check_output, partial_folder

    source, output = Path(source).resolve(), Path(output_folder).resolve()
    if not 0.0 <= options.min_brain_dice <= 1.0:
        raise UserError(f"--min-brain-dice must be between 0 and 1, got {options.min_brain_dice}")
    if options.flip_to not in (None, "left", "right"):
        raise UserError(f"--flip-to-side must be left or right, got {options.flip_to!r}")
    if (options.flip_to is None) != (sides_table is None):
        raise UserError("--flip-to-side and --lesion-sides go together: the side to put every lesion on, and "
                        "the table of each case's lesion side")
    if jobs < 1:
        raise UserError(f"-j/--jobs must be 1 or more, got {jobs}")
    resolve_method(options.brain_mask_method)
    cases = find_inputs(source)
    sides = read_sides(Path(sides_table), cases) if sides_table is not None else {}
    inputs = [source] + [Path(p) for p in atlas_files] + ([Path(sides_table)] if sides_table else [])
    check_output(output, inputs, overwrite)
    atlas = atlas or synthetic_atlas()
    summary = AspectsSummary(output)
    with partial_folder(output) as work:
        bar = tqdm(total=len(cases), desc="prepare-aspects", unit="case", disable=not progress)
        if jobs == 1:
            for case, ct_path in cases.items():
                summary.cases.append(process_case(case, ct_path, atlas, options, sides.get(case), work))
                bar.update()
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            from nnunet_ssl.prepare_ssl import _init_worker

            with ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker) as pool:
                futures = [pool.submit(process_case, case, ct_path, atlas, options, sides.get(case), work)
                           for case, ct_path in cases.items()]
                for future in as_completed(futures):
                    summary.cases.append(future.result())
                    bar.update()
            summary.cases.sort(key=lambda c: c.case)
        bar.close()
        if not summary.written:
            reasons = "; ".join(f"{c.case}: {c.reason}" for c in summary.cases[:3])
            raise UserError(f"no case registered well among {len(summary.cases)} ({reasons}); nothing written")
        generate_dataset_json(str(work), channel_names={0: "CT"}, labels=label_names(),
                              num_training_cases=len(summary.written), file_ending=".nii.gz",
                              dataset_name=dataset_name or output.name,
                              description="ASPECTS zones registered from an atlas (pretext task); labels 1-10 "
                                          "left hemisphere, 11-20 right",
                              aspects={"atlas": atlas.description, "flip_to_side": options.flip_to,
                                       "min_brain_dice": options.min_brain_dice})
        write_report(work, summary, atlas, options)
    return summary
