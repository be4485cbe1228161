"""Evaluate a folder of predicted label maps against a folder of references.

One row per case and foreground label; a summary per label with the
distribution of every metric and the agreement of predicted and true volumes
(Spearman correlation and ICC(3,1)).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_ssl.errors import UserError
from nnunet_ssl.evaluation import io, metrics, stats

PER_CASE_FILE = "evaluation_per_case.csv"
SUMMARY_FILE = "evaluation_summary.json"
PER_CASE_COLUMNS = ("case", "label") + metrics.METRIC_NAMES

#: More distinct values than this means the file is an image, not a label map.
MAX_LABELS = 100

CONVENTIONS = {
    "both_empty": "Dice 1.0, HD95 0.0 mm (included in summaries)",
    "one_empty": "Dice 0.0, HD95 NaN (left out of HD95 summaries, counted in n_nan)",
    "absent_everywhere": "a label in no prediction and no reference: Dice and HD95 NaN in every case, "
                         "with a warning",
    "hd95": "max of the two directed 95th percentiles of surface-voxel distances, in mm",
    "icc": "ICC(3,1): two-way mixed, consistency, single rater, on (predicted, true) volumes",
}


@dataclass(frozen=True)
class Settings:
    """What to compute; the defaults evaluate every label without filtering."""

    labels: tuple[int, ...] | None = None
    min_lesion_ml: float = 0.0
    filter_prediction: bool = False
    connectivity: int = 26


def _labels_present(array: np.ndarray, path: Path) -> set[int]:
    if array.size == 0:
        return set()
    top = int(array.max())
    if top <= np.iinfo(np.uint16).max:
        # bincount in chunks: linear time and no full-size int64 copy of a CT-sized volume.
        counts = np.zeros(top + 1, np.int64)
        flat = array.reshape(-1)
        for start in range(0, flat.size, 1 << 24):
            counts += np.bincount(flat[start:start + (1 << 24)].astype(np.intp, copy=False), minlength=top + 1)
        found = set(np.flatnonzero(counts).tolist())
    else:
        found = set(np.unique(array).tolist())
    found.discard(0)
    if len(found) > MAX_LABELS:
        raise UserError(f"{path} has {len(found)} distinct values; that is not a label map "
                        f"(at most {MAX_LABELS} labels). Check that you gave the segmentation folders.")
    return found


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def label_metrics(pred: np.ndarray, true: np.ndarray, spacing: Sequence[float],
                  settings: Settings) -> dict[str, float]:
    """Metrics of one binary label after the optional small-lesion filter.

    Works on the bounding box of the two masks, which gives the same values as
    the whole volume and is much faster on CT-sized images.

    Example:
        >>> m = np.zeros((4, 4, 4), bool); m[1:3, 1:3, 1:3] = True
        >>> label_metrics(m, m, (1, 1, 1), Settings())["dice"]
        1.0
    """
    union = pred | true
    if union.any():
        box = _bounding_box(union)
        pred, true = pred[box], true[box]
    if settings.min_lesion_ml > 0:
        true = metrics.remove_small_lesions(true, spacing, settings.min_lesion_ml, settings.connectivity)
        if settings.filter_prediction:
            pred = metrics.remove_small_lesions(pred, spacing, settings.min_lesion_ml, settings.connectivity)
    return metrics.case_metrics(pred, true, spacing, settings.connectivity)


def evaluate_case(case: str, pred_path: Path, gt_path: Path,
                  settings: Settings) -> tuple[list[dict], set[int]]:
    """Rows (one per label) of one case, and the labels found in either file.

    Raises:
        UserError: the two files are not on the same voxel grid, or are not label maps.
    """
    pred, _, pred_image = io.read_label_map(pred_path)
    true, spacing, true_image = io.read_label_map(gt_path)
    io.check_geometry(case, pred_image, true_image)
    found = _labels_present(pred, pred_path) | _labels_present(true, gt_path)
    labels = settings.labels if settings.labels is not None else sorted(found)
    rows = []
    for label in labels:
        row = {"case": case, "label": int(label)}
        row.update(label_metrics(pred == label, true == label, spacing, settings))
        rows.append(row)
    return rows, found


def _evaluate_task(task: tuple) -> tuple[list[dict], set[int]]:
    return evaluate_case(*task)


def _empty_row(case: str, label: int, settings: Settings) -> dict:
    # A label absent from both files: whatever the conventions give for two empty masks.
    empty = np.zeros((1, 1, 1), bool)
    return {"case": case, "label": label, **label_metrics(empty, empty, (1.0, 1.0, 1.0), settings)}


def _undefined(row: dict) -> dict:
    # A label in no file of either folder: nothing agrees or disagrees, so overlap and distance are undefined
    return {**row, "dice": float("nan"), "hd95_mm": float("nan")}


def evaluate_folder(pred_dir: Path, gt_dir: Path, settings: Settings = Settings(),
                    file_ending: str = ".nii.gz", num_processes: int = 1,
                    allow_missing: bool = False, progress: bool | None = None) -> tuple[list[dict], dict]:
    """Evaluate every prediction against its reference: ``(per-case rows, summary)``.

    Without ``settings.labels`` the labels are every foreground value found in
    any prediction or reference (label 1 if every mask is empty); a case
    without a label gets the both-empty values for it. A label found in no
    file at all gets NaN Dice and HD95 in every case and a warning in
    ``summary["warnings"]``.

    Example:
        >>> rows, summary = evaluate_folder(Path("pred"), Path("labelsTr"), num_processes=4)  # doctest: +SKIP
        >>> summary["labels"]["1"]["metrics"]["dice"]["median"]  # doctest: +SKIP
        0.71
    """
    from tqdm import tqdm

    pairs, missing = io.pair_cases(Path(pred_dir), Path(gt_dir), file_ending, allow_missing)
    tasks = [(case, p, g, settings) for case, p, g in pairs]
    bar = dict(total=len(tasks), desc="Evaluating", unit="case", disable=None if progress is None else not progress)
    if num_processes > 1 and len(tasks) > 1:
        import multiprocessing

        with multiprocessing.get_context().Pool(min(num_processes, len(tasks))) as pool:
            results = list(tqdm(pool.imap(_evaluate_task, tasks), **bar))
    else:
        results = [_evaluate_task(t) for t in tqdm(tasks, **bar)]

    labels = sorted(settings.labels if settings.labels is not None
                    else set().union(*(found for _, found in results)))
    if not labels:
        # Every mask is empty: report the binary task's label rather than nothing.
        labels = [1]
    found = set().union(*(found for _, found in results))
    absent = [label for label in labels if label not in found]
    rows = []
    for (case, _, _), (case_rows, _) in zip(pairs, results):
        by_label = {r["label"]: r for r in case_rows}
        for label in labels:
            row = by_label.get(label) or _empty_row(case, label, settings)
            rows.append(_undefined(row) if label in absent else row)
    summary = summarize(rows, labels)
    for label in labels:
        summary["labels"][str(label)]["absent_everywhere"] = label in absent
    summary["warnings"] = [
        f"label {label} is in no prediction and no reference; its Dice and HD95 are undefined (NaN), not the "
        "both-empty 1.0 / 0.0 of a single case. Check the label number." for label in absent]
    summary["settings"] = {
        "prediction_folder": str(Path(pred_dir).resolve()), "ground_truth_folder": str(Path(gt_dir).resolve()),
        "file_ending": file_ending, "labels": labels, "min_lesion_ml": settings.min_lesion_ml,
        "filter_prediction": settings.filter_prediction, "connectivity": settings.connectivity,
        "n_cases": len(pairs), "cases_without_prediction": missing,
    }
    summary["conventions"] = CONVENTIONS
    return rows, summary


def summarize(rows: Sequence[dict], labels: Sequence[int]) -> dict:
    """Per-label summary of per-case rows: metric distributions and volume agreement.

    Example:
        >>> rows = [{"label": 1, "dice": 0.5, "hd95_mm": float("nan"), "avd_ml": 1.0,
        ...          "volume_pred_ml": 2.0, "volume_true_ml": 3.0, "lesions_pred": 1, "lesions_true": 1}]
        >>> summarize(rows, [1])["labels"]["1"]["metrics"]["hd95_mm"]["n_nan"]
        1
    """
    out: dict = {"labels": {}}
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        v_pred = np.array([r["volume_pred_ml"] for r in mine], float)
        v_true = np.array([r["volume_true_ml"] for r in mine], float)
        rho, p, n = stats.spearman(v_pred, v_true)
        out["labels"][str(label)] = {
            "n_cases": len(mine),
            "n_empty_ground_truth": int(np.sum(v_true == 0)),
            "n_empty_prediction": int(np.sum(v_pred == 0)),
            "metrics": {m: stats.describe([r[m] for r in mine]) for m in metrics.METRIC_NAMES},
            "volume_agreement": {
                "spearman_rho": rho, "spearman_p": p, "n": n,
                "icc_3_1": stats.icc_3_1(np.column_stack([v_pred, v_true])) if mine else float("nan"),
            },
        }
    return out


def write_outputs(out_dir: Path, rows: Sequence[dict], summary: dict) -> tuple[Path, Path]:
    """Write the per-case CSV and the JSON summary into ``out_dir`` (created if needed)."""
    with io.output_folder(out_dir) as out_dir:
        csv_path, json_path = out_dir / PER_CASE_FILE, out_dir / SUMMARY_FILE
        io.write_csv(csv_path, rows, PER_CASE_COLUMNS)
        io.write_json(json_path, summary)
    return csv_path, json_path
