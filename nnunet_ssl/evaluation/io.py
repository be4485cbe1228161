"""Reading masks and pairing cases for evaluation; writing tables.

Case identifiers are file names without the file ending, as in nnU-Net
(``CASE_001.nii.gz`` -> ``CASE_001``). Files with another ending (nnU-Net's
``.npz`` probabilities, ``.pkl``, ``plans.json``...) are ignored.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from nnunet_ssl.errors import UserError

#: Allowed difference in spacing and origin (mm) and direction cosines between
#: a prediction and its reference. Predictions written by nnU-Net copy the
#: reference geometry exactly; this only absorbs float32 rounding by other tools.
GEOMETRY_TOLERANCE = 1e-3


def list_cases(folder: Path, file_ending: str) -> dict[str, Path]:
    """Map case identifier -> file for every file in ``folder`` ending in ``file_ending``.

    Example:
        >>> list_cases(Path("predictions"), ".nii.gz")  # doctest: +SKIP
        {'CASE_001': PosixPath('predictions/CASE_001.nii.gz')}
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder. Give the folder that holds the {file_ending} files.")
    return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(file_ending) and len(p.name) > len(file_ending)}


def pair_cases(pred_dir: Path, gt_dir: Path, file_ending: str,
               allow_missing: bool = False) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair predictions with references by case identifier.

    Returns the pairs (sorted by case) and the references without a prediction
    (only ever non-empty with ``allow_missing``).

    Raises:
        UserError: an empty folder; a prediction without a reference; a
            reference without a prediction unless ``allow_missing``.

    Example:
        >>> pairs, missing = pair_cases(Path("pred"), Path("labelsTr"), ".nii.gz")  # doctest: +SKIP
    """
    preds, gts = list_cases(pred_dir, file_ending), list_cases(gt_dir, file_ending)
    for name, found, folder in (("prediction", preds, pred_dir), ("ground truth", gts, gt_dir)):
        if not found:
            raise UserError(f"No {name} files ending in '{file_ending}' in {folder}. "
                            f"Check the folder, or pass the right ending with -fe/--file-ending.")
    extra = sorted(set(preds) - set(gts))
    if extra:
        raise UserError(f"{len(extra)} prediction(s) have no ground truth in {gt_dir}: {_shorten(extra)}. "
                        "Remove them from the prediction folder or add their reference masks.")
    missing = sorted(set(gts) - set(preds))
    if missing and not allow_missing:
        raise UserError(f"{len(missing)} ground-truth case(s) have no prediction in {pred_dir}: "
                        f"{_shorten(missing)}. Predict them, or pass --allow-missing to evaluate "
                        "only the cases that have both.")
    return [(c, preds[c], gts[c]) for c in sorted(preds)], missing


def _shorten(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_label_map(path: Path) -> tuple[np.ndarray, tuple[float, ...], Any]:
    """Read a label map: ``(integer array, spacing in array order, SimpleITK image)``.

    Integer images keep their type (a uint8 mask stays one byte per voxel).

    Raises:
        UserError: values that are not non-negative integers (a probability map,
            an intensity image).
    """
    import SimpleITK as sitk

    from nnunet_ssl.ct.io import CaseError, read_image

    try:
        image = read_image(path, pixel_type=None)  # detects truncated and corrupt files
    except CaseError as e:
        raise UserError(f"{path}: {e}") from None
    if image.GetDimension() != 3:
        raise UserError(f"{path} is a {image.GetDimension()}D image; label maps must be 3D volumes "
                        "(one file per case, as nnU-Net writes them).")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                        "a label map has one.")
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise UserError(f"{path} holds non-integer values; give label maps (0 = background, "
                            "1, 2, ... = labels), not probabilities or images.")
    if array.size and array.min() < 0:
        raise UserError(f"{path} holds negative values; labels must be 0 (background) or positive integers.")
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.int64)
    return array, tuple(image.GetSpacing()[::-1]), image


def check_geometry(case: str, pred_image: Any, true_image: Any,
                   tolerance: float = GEOMETRY_TOLERANCE) -> None:
    """Raise a :class:`UserError` naming ``case`` if the two images do not share a voxel grid."""
    if pred_image.GetSize() != true_image.GetSize():
        raise UserError(f"Case {case}: prediction size {pred_image.GetSize()} differs from ground truth "
                        f"size {true_image.GetSize()} (x, y, z). Predictions must be on the reference grid; "
                        "resample the prediction to the ground truth first.")
    for what in ("Spacing", "Origin", "Direction"):
        p = np.asarray(getattr(pred_image, f"Get{what}")())
        t = np.asarray(getattr(true_image, f"Get{what}")())
        if p.shape != t.shape or np.max(np.abs(p - t)) > tolerance:
            def shown(v):
                return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"
            raise UserError(f"Case {case}: {what.lower()} of the prediction {shown(p)} differs from the "
                            f"ground truth {shown(t)} (ITK order x, y, z) by more than {tolerance}. "
                            "Predictions must be on the reference grid; resample the prediction first.")


@contextlib.contextmanager
def output_folder(out_dir: Path) -> Iterator[Path]:
    """Create ``out_dir`` and turn any failure to write into it into one clear :class:`UserError`.

    Example:
        >>> with output_folder(Path("eval")) as out:  # doctest: +SKIP
        ...     write_json(out / "summary.json", {})
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"The output {out_dir} is a file; give a folder with -o.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        yield out_dir
    except OSError as e:
        raise UserError(f"cannot write to {out_dir}: {e.strerror or e}. Choose a folder you may write to "
                        "with -o.") from None


def _clean(value: Any) -> Any:
    # JSON has no NaN; null is what other tools read back as missing.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON with NaN and infinity written as ``null``."""
    Path(path).write_text(json.dumps(_clean(data), indent=2) + "\n", encoding="utf-8")


def write_csv(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """Write rows as CSV; floats with 8 significant digits, NaN as an empty cell."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _format(row.get(c)) for c in columns})


def _format(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(value) else f"{float(value):.8g}"
    return value


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dictionaries of strings."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
