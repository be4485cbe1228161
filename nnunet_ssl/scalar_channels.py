"""Clinical scalars (NIHSS, age, time from onset) as extra input channels of an nnU-Net raw dataset.

Early fusion of a per-patient number: every case gets one more image per
scalar, on the voxel grid of its channel 0, holding the case's value. nnU-Net
then treats it like any other channel (cropping, resampling, patches,
augmentation, prediction).

Two choices keep nnU-Net's preprocessing of the images as it was:

* **Normalisation ``noNorm``.** nnU-Net z-scores a channel per image by
  default, and rescales ``rescale_to_0_1`` per image too: both turn a constant
  image into 0 and the value is lost. The channel is declared ``"noNorm"`` and
  the value is written as it is, or mapped linearly from a stated clinical
  range to [0, 1] (``ranges``, e.g. NIHSS 0..42), which keeps it on the scale
  of the normalised images and the same for every case, now and later.
* **The value fills nnU-Net's nonzero region.** nnU-Net crops every case to
  the region where any channel is nonzero (holes filled), and may normalise
  within it. A channel that is nonzero everywhere would end that cropping for
  skull-stripped images (0 outside the brain) and only for cases whose value
  is not 0. So the value is written inside that region of the existing
  channels and 0 outside: where the images have no zeros (CT with air at
  -1000 HU) that is the whole image. ``whole_image=True`` writes it everywhere.

The input folder is only read. The new dataset is built in a hidden
``.NAME.partial`` folder beside the output and moved into place at the end.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from nnunet_ssl.errors import UserError
from nnunet_ssl.raw_dataset import check_output, partial_folder

SCALAR_NORMALIZATION = "noNorm"
VALUES_FILE = "scalar_channels.csv"
# file endings SimpleITK reads and writes with their geometry (nnU-Net's SimpleITKIO, plus plain .nii)
SITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl")


@dataclass
class ScalarTable:
    """Scalar values per case, read from a CSV."""

    path: Path
    case_column: str
    columns: list[str]
    rows: dict[str, dict[str, str]]  # case -> column -> text as written


@dataclass
class ScalarSummary:
    output: Path
    channels: dict[int, str]            # new channel index -> column
    cases: dict[str, dict[str, float]]  # case -> column -> value written
    unused_rows: list[str] = field(default_factory=list)  # CSV cases not in the dataset


def read_scalar_table(csv_path: Path | str, case_column: Optional[str] = None,
                      columns: Optional[Sequence[str]] = None) -> ScalarTable:
    """Read a CSV with one row per case: a case identifier column and scalar columns.

    Args:
        csv_path: The CSV (comma-separated, a header row; a UTF-8 byte-order mark is fine).
        case_column: Column of the case identifiers (default: the first column).
        columns: Scalar columns, in channel order (default: every other column).

    Raises:
        UserError: Missing file or column, no rows, a case given twice, or a
            scalar column that is also the case column.

    Example:
        >>> read_scalar_table("clinical.csv", "case_id", ["NIHSS"]).columns  # doctest: +SKIP
        ['NIHSS']
    """
    path = Path(csv_path)
    if not path.is_file():
        raise UserError(f"CSV {path} does not exist or is not a file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        lines = [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
                 for row in reader]
    if not header:
        raise UserError(f"CSV {path} is empty; it needs a header row (e.g. case_id,NIHSS)")
    case_column = case_column or header[0]
    if case_column not in header:
        raise UserError(f"CSV {path} has no column '{case_column}'; its columns are {header}")
    columns = list(columns) if columns else [h for h in header if h != case_column]
    if not columns:
        raise UserError(f"CSV {path} has no scalar column besides the case column '{case_column}'")
    lacking = [c for c in columns if c not in header]
    if lacking:
        raise UserError(f"CSV {path} has no column(s) {lacking}; its columns are {header}")
    if case_column in columns:
        raise UserError(f"'{case_column}' is the case column; it cannot also be a scalar column")
    if len(set(columns)) != len(columns):
        raise UserError(f"scalar columns given twice: {columns}")
    rows: dict[str, dict[str, str]] = {}
    for line_number, row in enumerate(lines, start=2):
        case = row.get(case_column, "")
        if not case:
            raise UserError(f"CSV {path}, line {line_number}: empty case identifier in column '{case_column}'")
        if case in rows:
            raise UserError(f"CSV {path}: case '{case}' appears twice (line {line_number} again)")
        rows[case] = {c: row.get(c, "") for c in columns}
    if not rows:
        raise UserError(f"CSV {path} has a header but no rows")
    return ScalarTable(path, case_column, columns, rows)


def parse_range(text: str) -> tuple[str, tuple[float, float]]:
    """``"NIHSS=0:42"`` -> ``("NIHSS", (0.0, 42.0))``.

    Example:
        >>> parse_range("NIHSS=0:42")
        ('NIHSS', (0.0, 42.0))
    """
    column, sep, bounds = text.partition("=")
    low, sep2, high = bounds.partition(":")
    try:
        if not (sep and sep2 and column.strip()):
            raise ValueError
        lo, hi = float(low), float(high)
    except ValueError:
        raise UserError(f"--range '{text}' must be COLUMN=LOW:HIGH, e.g. NIHSS=0:42") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(f"--range '{text}': LOW must be below HIGH, both finite")
    return column.strip(), (lo, hi)


def scalar_value(text: str, case: str, column: str, value_range: Optional[tuple[float, float]] = None) -> float:
    """The value written for one case and column: the number, or its position in ``value_range``.

    Raises:
        UserError: Empty, not a number, not finite, or outside ``value_range``; naming the case and column.

    Example:
        >>> scalar_value("21", "case_001", "NIHSS", (0, 42))
        0.5
    """
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        what = "is empty" if not text else f"is '{text}', not a finite number"
        raise UserError(f"case '{case}', column '{column}': the value {what}; give a number for every case")
    if value_range is None:
        return value
    lo, hi = value_range
    if not lo <= value <= hi:
        raise UserError(f"case '{case}', column '{column}': {text} lies outside the range {lo:g}..{hi:g} "
                        "given with --range")
    return (value - lo) / (hi - lo)


def _dataset_cases(folder: Path, dataset_json: dict) -> dict[str, tuple[str, list[Path]]]:
    """case -> (images folder name, channel files in order), for imagesTr and imagesTs."""
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder

    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    cases: dict[str, tuple[str, list[Path]]] = {}
    for subset in ("imagesTr", "imagesTs"):
        images = folder / subset
        if not images.is_dir():
            continue
        for case in get_identifiers_from_splitted_dataset_folder(str(images), ending):
            files = [images / f"{case}_{c:04d}{ending}" for c in range(n_channels)]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise UserError(f"{subset}: case '{case}' lacks {missing}; dataset.json declares "
                                f"{n_channels} channel(s)")
            if case in cases:
                raise UserError(f"case '{case}' is in both imagesTr and imagesTs; give it one place")
            cases[str(case)] = (subset, files)
    if not any(subset == "imagesTr" for subset, _ in cases.values()):
        raise UserError(f"{folder / 'imagesTr'} holds no case with the file ending '{ending}'")
    return cases


def _read_dataset_json(folder: Path) -> dict:
    path = folder / "dataset.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder} holds no dataset.json; give an nnU-Net raw dataset folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    for key in ("channel_names", "file_ending", "labels"):
        if key not in (data if isinstance(data, dict) else {}):
            raise UserError(f"{path} has no '{key}'; it is not an nnU-Net v2 dataset.json")
    if "dataset" in data:
        raise UserError(f"{path} lists its files under 'dataset'; only datasets laid out in imagesTr/labelsTr "
                        "folders are supported")
    if data["file_ending"] not in SITK_ENDINGS:
        raise UserError(f"file ending '{data['file_ending']}' is not supported; images must be one of "
                        f"{', '.join(SITK_ENDINGS)} (read and written with SimpleITK)")
    return data


def _write_case(files: list[Path], out_folder: Path, case: str, ending: str, first_index: int,
                values: Sequence[float], whole_image: bool) -> None:
    import numpy as np
    import SimpleITK as sitk
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask

    from nnunet_ssl.ct.io import CaseError, read_image, write_image

    try:
        images = [read_image(f) for f in files]
    except CaseError as e:
        raise UserError(f"case '{case}': {e}") from None
    reference = images[0]
    if whole_image:
        region = np.ones(sitk.GetArrayViewFromImage(reference).shape, dtype=np.float32)
    else:  # the region nnU-Net crops to, computed by nnU-Net's own function
        region = create_nonzero_mask(np.stack([sitk.GetArrayViewFromImage(i) for i in images])).astype(np.float32)
    for k, value in enumerate(values):
        target = out_folder / f"{case}_{first_index + k:04d}{ending}"
        if target.exists():
            raise UserError(f"{target.name} is in the input already, beyond the channels its dataset.json "
                            "declares; remove it from the input first")
        channel = sitk.GetImageFromArray(region * np.float32(value))
        channel.CopyInformation(reference)
        write_image(channel, target)


def add_scalar_channels(input_folder: Path | str, csv_path: Path | str, output_folder: Path | str,
                        columns: Optional[Sequence[str]] = None, case_column: Optional[str] = None,
                        ranges: Optional[Mapping[str, tuple[float, float]]] = None, whole_image: bool = False,
                        overwrite: bool = False, progress: bool = True) -> ScalarSummary:
    """Write a copy of an nnU-Net raw dataset with one more input channel per clinical scalar.

    Args:
        input_folder: The raw dataset (``dataset.json``, ``imagesTr``, ``labelsTr``,
            optionally ``imagesTs``); only read.
        csv_path: One row per case; every case of ``imagesTr`` and ``imagesTs`` needs a number.
        output_folder: The new dataset folder, e.g. ``$nnUNet_raw/Dataset511_StrokeNIHSS``.
        columns: Scalar columns, in channel order (default: all but the case column).
        case_column: Column of the case identifiers (default: the first).
        ranges: ``{column: (low, high)}``: write ``(value - low) / (high - low)`` and
            refuse values outside; columns without a range are written as they are.
        whole_image: Fill the whole image instead of nnU-Net's nonzero region (module docstring).
        overwrite: Replace an existing output folder.
        progress: Show a progress bar.

    Returns:
        A :class:`ScalarSummary`. The output's ``dataset.json`` declares the new
        channels ``"noNorm"`` and records their columns under ``scalar_channels``;
        ``scalar_channels.csv`` lists the values written per case.

    Raises:
        UserError: Bad input (naming the case and column for a missing, empty or
            non-numeric value), or an existing output without ``overwrite``.

    Example:
        >>> add_scalar_channels("nnUNet_raw/Dataset502_Stroke", "clinical.csv",
        ...                     "nnUNet_raw/Dataset512_StrokeNIHSS", columns=["NIHSS"],
        ...                     ranges={"NIHSS": (0, 42)})  # doctest: +SKIP
    """
    from tqdm import tqdm

    from nnunet_ssl.ct.folders import write_json

    input_folder = Path(input_folder).resolve()
    output = Path(output_folder).resolve()
    if not input_folder.is_dir():
        raise UserError(f"input dataset folder {input_folder} does not exist or is not a folder")
    dataset_json = _read_dataset_json(input_folder)
    table = read_scalar_table(csv_path, case_column, columns)
    ranges = dict(ranges or {})
    unknown = sorted(set(ranges) - set(table.columns))
    if unknown:
        raise UserError(f"--range names column(s) {unknown} that are not scalar columns {table.columns}")
    cases = _dataset_cases(input_folder, dataset_json)
    missing = [c for c in cases if c not in table.rows]
    if missing:
        shown = ", ".join(f"'{c}'" for c in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"case(s) {shown} of the dataset have no row in {table.path} (column "
                        f"'{table.case_column}'); every case needs its {', '.join(table.columns)}")
    values = {case: {col: scalar_value(table.rows[case][col], case, col, ranges.get(col)) for col in table.columns}
              for case in cases}
    unused = sorted(set(table.rows) - set(cases))
    check_output(output, [input_folder], overwrite)

    ending = dataset_json["file_ending"]
    first = len(dataset_json["channel_names"])
    channels = {first + k: col for k, col in enumerate(table.columns)}
    with partial_folder(output) as work:
        shutil.copytree(input_folder, work, dirs_exist_ok=True)
        for case, (subset, files) in tqdm(cases.items(), desc="add-scalars", unit="case", disable=not progress):
            _write_case(files, work / subset, case, ending, first, list(values[case].values()), whole_image)
        new_json = dict(dataset_json)
        new_json["channel_names"] = {**dataset_json["channel_names"],
                                     **{str(i): SCALAR_NORMALIZATION for i in channels}}
        new_json["scalar_channels"] = {
            str(i): {"column": col, "csv": table.path.name,
                     "range": list(ranges[col]) if col in ranges else None,
                     "filled": "whole image" if whole_image else "nonzero region of the other channels"}
            for i, col in channels.items()}
        write_json(work / "dataset.json", new_json)
        with open(work / VALUES_FILE, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["case", "subset"] + table.columns)
            for case, (subset, _) in cases.items():
                writer.writerow([case, subset] + [repr(values[case][c]) for c in table.columns])
    return ScalarSummary(output, channels, values, unused)
