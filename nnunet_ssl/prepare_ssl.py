"""An nnU-Net raw dataset of unlabelled head CT for SSL pretraining, brain masks as labels.

nnU-Net computes the intensity statistics it normalises CT with from the voxels
under the segmentation labels. Unlabelled CT has none, so each case is given its
brain mask as label: the statistics then describe brain tissue, which is what
the segmentation target (a lesion inside the brain) needs too.

Each case is read (NIfTI, NRRD, MetaImage or a DICOM series folder), checked
(3D, plausible Hounsfield units), optionally turned to a common axis order
(no interpolation), given a brain mask (computed, or the user's) whose volume
must be plausible, and written as ``imagesTr/<case>_0000.nii.gz`` and
``labelsTr/<case>.nii.gz``. Cases that fail a check are skipped with the reason
in ``prepare_report.csv``; ``manifest.csv`` maps every written case back to its
source. The dataset is assembled in a hidden folder and moved into place at the
end, so an interrupted run leaves no half-written dataset.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from nnunet_ssl.errors import UserError

# Adult intracranial soft tissue (brain and CSF spaces) is about 1.1-1.7 L; masks
# far outside this range are failed extractions (scalp leak, cut-off head, a child).
DEFAULT_MIN_BRAIN_ML = 700.0
DEFAULT_MAX_BRAIN_ML = 2100.0
MANIFEST_NAME = "manifest.csv"
REPORT_NAME = "prepare_report.csv"
MANIFEST_COLUMNS = ("case_id", "source", "source_path", "mask_source", "brain_volume_ml",
                    "original_size", "original_spacing", "original_orientation")
REPORT_COLUMNS = ("case_id", "source", "source_path", "status", "reason", "brain_volume_ml")


@dataclass(frozen=True)
class PrepareOptions:
    """How cases are checked and written.

    Attributes:
        min_brain_ml, max_brain_ml: Plausible brain mask volume; others are skipped.
        brain_mask_method: Method of :func:`nnunet_ssl.ct.brain_mask.brain_mask`.
        orientation: Axis order written (``"LPS"``: identity direction), or ``None`` to keep each
            file's own. Reorienting only permutes and flips axes (no interpolation), so that nnU-Net,
            which reads arrays and ignores the direction matrix, sees every head the same way round.
        hu_check: Reject images that do not look like head CT in HU (no air or no bone).
    """

    min_brain_ml: float = DEFAULT_MIN_BRAIN_ML
    max_brain_ml: float = DEFAULT_MAX_BRAIN_ML
    brain_mask_method: str = "builtin"
    orientation: Optional[str] = "LPS"
    hu_check: bool = True


@dataclass(frozen=True)
class CaseTask:
    """One input case and where it goes."""

    case_id: str
    source: str
    source_path: str
    mask_path: Optional[str]
    image_out: str
    label_out: str
    mask_required: bool = False  # masks were given, so a case without one is skipped
    input_case: str = ""  # the case id in its input folder, by which masks are matched


@dataclass
class CaseResult:
    """What happened to one case (a row of the report; included cases also go to the manifest)."""

    case_id: str
    source: str
    source_path: str
    status: str = "skipped"
    reason: str = ""
    mask_source: str = ""
    brain_volume_ml: Optional[float] = None
    original_size: str = ""
    original_spacing: str = ""
    original_orientation: str = ""


@dataclass
class PrepareSummary:
    """Outcome of :func:`prepare_ssl_dataset`."""

    folder: Path
    results: list[CaseResult] = field(default_factory=list)

    @property
    def included(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "included"]

    @property
    def skipped(self) -> list[CaseResult]:
        return [r for r in self.results if r.status != "included"]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def parse_inputs(inputs: Sequence[str]) -> list[tuple[str, Path]]:
    """``["DIR", "NAME=DIR"]`` -> ``[(source name, folder)]`` with unique names.

    The source name defaults to the folder's name; it prefixes the case ids and is
    what ``nnunet-ssl split`` stratifies by.
    """
    parsed = []
    for text in inputs:
        if "=" in text and not Path(text).exists():
            name, folder = text.split("=", 1)
        else:
            name, folder = Path(text).resolve().name, text
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"input folder {folder} does not exist or is not a folder")
        parsed.append((_safe(name), folder))
    names = Counter(n for n, _ in parsed)
    dup = [n for n, c in names.items() if c > 1]
    if dup:
        raise UserError(f"two input folders give the source name '{dup[0]}'; name them with NAME=DIR "
                        "(e.g. -i centre1=/data/a/ct centre2=/data/b/ct)")
    return parsed


def collect_tasks(inputs: Sequence[tuple[str, Path]], mask_folders: Sequence[Path], folder: Path
                  ) -> tuple[list[CaseTask], list[str]]:
    """Match input cases to masks and output files; returns tasks and the unmatched mask ids."""
    from nnunet_ssl.ct.io import find_cases

    per_source = [(name, find_cases(path, f"input ({name})")) for name, path in inputs]
    masks: dict[str, Path] = {}
    for mf in mask_folders:
        for cid, path in find_cases(mf, "masks").items():
            if cid in masks:
                raise UserError(f"masks {masks[cid]} and {path} are both for case '{cid}'; keep one")
            masks[cid] = path
    if masks:
        seen: dict[str, str] = {}
        for name, cases in per_source:
            for cid in cases:
                if cid in seen:
                    raise UserError(f"case '{cid}' is in inputs '{seen[cid]}' and '{name}'; masks are matched "
                                    "by case name, so rename one of them")
                seen[cid] = name
    tasks = []
    used = set()
    for name, cases in per_source:
        for cid, path in cases.items():
            out_id = f"{name}_{_safe(cid)}"
            if out_id in {t.case_id for t in tasks}:
                raise UserError(f"cases of input '{name}' give the same case id '{out_id}' once unsafe "
                                "characters are replaced; rename one of them")
            mask = masks.get(cid)
            if mask is not None:
                used.add(cid)
            tasks.append(CaseTask(out_id, name, str(path.resolve()), str(mask.resolve()) if mask else None,
                                  str(folder / "imagesTr" / f"{out_id}_0000.nii.gz"),
                                  str(folder / "labelsTr" / f"{out_id}.nii.gz"), mask_required=bool(masks),
                                  input_case=cid))
    return tasks, sorted(set(masks) - used)


def _fmt(values: Iterable[float]) -> str:
    return "x".join(f"{v:g}" for v in values)


def prepare_case(task: CaseTask, options: PrepareOptions) -> CaseResult:
    """Check, mask and write one case; never raises for a bad case (the reason is in the result)."""
    import SimpleITK as sitk

    from nnunet_ssl.ct.brain_mask import brain_mask, mask_volume_ml
    from nnunet_ssl.ct.io import CaseError, check_ct_hu, check_same_grid, check_volume, read_image

    result = CaseResult(task.case_id, task.source, task.source_path)
    try:
        image = read_image(task.source_path, sitk.sitkFloat32)
        check_volume(image, Path(task.source_path).name)
        result.original_size = _fmt(image.GetSize())
        result.original_spacing = _fmt(image.GetSpacing())
        result.original_orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
            image.GetDirection())
        if options.hu_check:
            check_ct_hu(image)
        arr = sitk.GetArrayViewFromImage(image)
        if float(arr.max()) == float(arr.min()):
            raise CaseError(f"constant image (every voxel {float(arr.min()):g})")
        if task.mask_path is None and task.mask_required:
            raise CaseError(f"no mask named '{task.input_case}' in the --masks folder(s)")
        if task.mask_path is None:
            mask = brain_mask(image, method=options.brain_mask_method, min_volume_ml=0.0,
                              max_volume_ml=float("inf"))
            result.mask_source = options.brain_mask_method
        else:
            mask = read_image(task.mask_path, sitk.sitkFloat32)
            result.mask_source = task.mask_path
            check_same_grid(image, mask, f"mask {Path(task.mask_path).name}")
            mask = sitk.Cast(mask > 0.5, sitk.sitkUInt8)
            mask.CopyInformation(image)
        volume = mask_volume_ml(mask)
        result.brain_volume_ml = round(volume, 1)
        if volume == 0:
            raise CaseError("empty brain mask")
        if not options.min_brain_ml <= volume <= options.max_brain_ml:
            raise CaseError(f"brain mask volume {volume:.0f} mL outside the plausible range "
                            f"{options.min_brain_ml:g}-{options.max_brain_ml:g} mL (--min-brain-ml/--max-brain-ml)")
        if options.orientation:
            image = sitk.DICOMOrient(image, options.orientation)
            mask = sitk.DICOMOrient(mask, options.orientation)
        arr = sitk.GetArrayViewFromImage(image)
        integral = np.array_equal(arr, np.round(arr)) and arr.min() >= -32768 and arr.max() <= 32767
        _write(image, task.image_out, sitk.sitkInt16 if integral else sitk.sitkFloat32)
        _write(mask, task.label_out, sitk.sitkUInt8)
        result.status, result.reason = "included", ""
    except CaseError as e:
        result.reason = str(e)
    except Exception as e:  # one odd file must not stop a run over thousands of cases
        result.reason = f"unexpected {type(e).__name__}: {e}".strip()
    return result


def _write(image, path: str, pixel_type: int) -> None:
    import SimpleITK as sitk

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(image, pixel_type), path, useCompression=True)


def _init_worker() -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _run_tasks(tasks: Sequence[CaseTask], options: PrepareOptions, jobs: int, progress: bool) -> list[CaseResult]:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="prepare-ssl", unit="case", disable=not progress)
    results = []
    if jobs <= 1:
        for task in tasks:
            results.append(prepare_case(task, options))
            bar.update()
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker) as pool:
            futures = [pool.submit(prepare_case, t, options) for t in tasks]
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
    bar.close()
    return sorted(results, key=lambda r: r.case_id)


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def prepare_ssl_dataset(inputs: Sequence[str], dataset_id: int, name: str, raw_folder: Optional[Path] = None,
                        masks: Sequence[str] = (), options: PrepareOptions = PrepareOptions(),
                        force: bool = False, jobs: int = 1, progress: bool = True) -> PrepareSummary:
    """Build ``nnUNet_raw/DatasetXXX_Name`` from folders of unlabelled head CT.

    Args:
        inputs: Folders with one image file or DICOM series folder per case, optionally
            ``NAME=DIR`` to name the source (default: the folder's name).
        dataset_id: nnU-Net dataset id (1-999).
        name: Dataset name (letters, digits, ``-``).
        raw_folder: Where datasets live (default: ``$nnUNet_raw``).
        masks: Folders of brain masks matched to the images by case name; without them
            masks are computed with ``options.brain_mask_method``.
        options: Checks and output orientation.
        force: Replace an existing dataset folder of the same name.
        jobs: Cases processed in parallel.
        progress: Show a progress bar.

    Returns:
        A :class:`PrepareSummary`; the dataset folder holds ``manifest.csv`` and ``prepare_report.csv``.

    Raises:
        UserError: Bad arguments, an existing dataset without ``force``, or no usable case.

    Example:
        >>> prepare_ssl_dataset(["centre1", "centre2"], 500, "HeadCT")  # doctest: +SKIP
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    if raw_folder is None:
        if not os.environ.get("nnUNet_raw"):
            raise UserError("nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw or pass --raw")
        raw_folder = Path(os.environ["nnUNet_raw"])
    raw_folder = Path(raw_folder)
    if not 1 <= int(dataset_id) <= 999:
        raise UserError(f"dataset id must be 1-999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise UserError(f"dataset name '{name}' may hold only letters, digits and '-'")
    if not options.min_brain_ml < options.max_brain_ml:
        raise UserError("--min-brain-ml must be below --max-brain-ml")
    if jobs < 1:
        raise UserError(f"-j/--jobs must be 1 or more, got {jobs}")
    from nnunet_ssl.ct.brain_mask import resolve_method

    resolve_method(options.brain_mask_method)  # fails early when a tool is missing
    folder_name = f"Dataset{int(dataset_id):03d}_{name}"
    folder = raw_folder / folder_name
    sources = parse_inputs(inputs)
    mask_folders = [Path(m) for m in masks]
    from nnunet_ssl.raw_dataset import check_output, partial_folder

    check_output(folder, [path for _, path in sources] + mask_folders, force, flag="--force")
    work = raw_folder / f".{folder_name}.partial"
    tasks, unused_masks = collect_tasks(sources, mask_folders, work)
    if unused_masks:
        print(f"{len(unused_masks)} mask(s) match no input case, e.g. '{unused_masks[0]}'")
    with partial_folder(folder) as work:
        results = _run_tasks(tasks, options, jobs, progress)
        included = [r for r in results if r.status == "included"]
        if not included:
            reasons = "; ".join(f"{r.case_id}: {r.reason}" for r in results[:5])
            raise UserError(f"no usable case among {len(results)} ({reasons}); nothing written")
        (work / "imagesTr").mkdir(exist_ok=True)
        (work / "labelsTr").mkdir(exist_ok=True)
        generate_dataset_json(str(work), channel_names={0: "CT"}, labels={"background": 0, "brain": 1},
                              num_training_cases=len(included), file_ending=".nii.gz", dataset_name=folder_name,
                              description="Unlabelled head CT for self-supervised pretraining; the labels are "
                                          "brain masks so that nnU-Net's intensity statistics come from the brain.")
        write_csv(work / MANIFEST_NAME, [asdict(r) for r in included], MANIFEST_COLUMNS)
        write_csv(work / REPORT_NAME, [asdict(r) for r in results], REPORT_COLUMNS)
    return PrepareSummary(folder, results)
