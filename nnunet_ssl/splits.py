"""Train/validation/test splits stratified by source, lesion side and lesion volume.

The paper splits every dataset 70/20/10 at the patient level, so that each subset
holds the same mix of left, right and bilateral lesions and of lesion sizes.
Here each source (centre, dataset) is split on its own; within a source the cases
are ordered by stratum (side, then volume bin) in a seeded random order inside
each stratum, and the test and validation cases are drawn by systematic sampling
(every k-th case from a random start). Every stratum thus gets its share within
one case, however small it is. (scikit-learn's stratified splitters refuse strata
with fewer than two cases, which small stroke datasets always have, e.g.
bilateral lesions.)

Lesion side uses physical coordinates: in ITK's LPS frame +x points to the
patient's left, whatever the voxel order or orientation of the file. The midline
is the x coordinate of the head's centroid (voxels above the image's Otsu
threshold), or of the field of view's centre when no image is given.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from nnunet_ssl.errors import UserError

SIDES = ("none", "left", "right", "both")
TEST_FILE = "splits_test.json"
STRATA_FILE = "splits_strata.csv"


@dataclass
class CaseStrata:
    """What a case is stratified by, and where it went."""

    case_id: str
    source: str
    side: str
    lesion_volume_ml: float
    volume_bin: int = 0
    subset: str = ""


def _physical_x(image, index_zyx: np.ndarray) -> np.ndarray:
    """Physical (LPS) x of numpy ``(z, y, x)`` voxel indices."""
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    xyz = index_zyx[:, ::-1] * np.array(image.GetSpacing(), float)
    return image.GetOrigin()[0] + xyz @ direction[0]


def midline_x(image) -> float:
    """Physical x of the head's centroid (Otsu foreground of ``image``)."""
    import SimpleITK as sitk

    fg = sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(fg)
    if 1 not in stats.GetLabels():
        return fov_centre_x(image)
    return float(stats.GetCentroid(1)[0])


def fov_centre_x(image) -> float:
    centre = [(n - 1) / 2.0 for n in image.GetSize()]
    return float(image.TransformContinuousIndexToPhysicalPoint(centre)[0])


def lesion_side(label, image=None, min_fraction: float = 0.1, ignore_label: Optional[int] = None) -> str:
    """``"left"``, ``"right"``, ``"both"`` or ``"none"`` (the patient's sides).

    Args:
        label: Lesion label map (any value above 0 is lesion, except ``ignore_label``).
        image: The case's image, to find the midline; without it the field of view's centre.
        min_fraction: A side counts when it holds at least this fraction of the lesion volume,
            so that a lesion grazing the midline is not called bilateral.
    """
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(label)
    lesion = arr > 0 if ignore_label is None else (arr > 0) & (arr != ignore_label)
    idx = np.argwhere(lesion)
    if len(idx) == 0:
        return "none"
    mid = midline_x(image) if image is not None else fov_centre_x(label)
    left = float(np.mean(_physical_x(label, idx) > mid))
    is_left, is_right = left >= min_fraction, (1.0 - left) >= min_fraction
    return "both" if is_left and is_right else ("left" if is_left else "right")


def lesion_volume_ml(label, ignore_label: Optional[int] = None) -> float:
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(label)
    lesion = arr > 0 if ignore_label is None else (arr > 0) & (arr != ignore_label)
    return float(np.count_nonzero(lesion)) * float(np.prod(label.GetSpacing())) / 1000.0


def volume_bins(volumes: Sequence[float], n_bins: int = 3) -> list[int]:
    """0 for no lesion; 1..n by quantiles of the lesion volumes (small, medium, large for n=3).

    Example:
        >>> volume_bins([0, 1, 2, 30, 40, 50, 0], 3)
        [0, 1, 1, 2, 3, 3, 0]
    """
    vols = np.asarray(volumes, float)
    pos = vols[vols > 0]
    out = np.zeros(len(vols), int)
    if len(pos) == 0:
        return out.tolist()
    n = max(1, min(n_bins, len(pos)))
    edges = np.quantile(pos, np.linspace(0, 1, n + 1)[1:-1])
    out[vols > 0] = 1 + np.searchsorted(edges, vols[vols > 0], side="right")
    return out.tolist()


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _systematic(items: list, k: int, rng: np.random.Generator) -> list:
    """``k`` items spread evenly over ``items`` from a random start."""
    if k <= 0:
        return []
    step = len(items) / k
    start = rng.uniform(0, step)
    return [items[int(math.floor(start + i * step))] for i in range(k)]


def assign_subsets(cases: Sequence[CaseStrata], test_fraction: float = 0.1, val_fraction: float = 0.2,
                   seed: int = 12345) -> dict[str, str]:
    """``{case_id: "train" | "val" | "test"}``, per source, stratified by side and volume bin.

    Each source of ``n`` cases gives ``round(n * test_fraction)`` test and
    ``round(n * val_fraction)`` validation cases (halves round up); a source too small for all
    three keeps a training case first, then a validation case (nnU-Net needs both).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for source in sorted({c.source for c in cases}):
        group = sorted((c for c in cases if c.source == source), key=lambda c: c.case_id)
        n = len(group)
        n_test = _round_half_up(n * test_fraction)
        n_val = _round_half_up(n * val_fraction)
        while n_test + n_val > n - 1 and (n_test or n_val):  # keep a training case, then a validation case
            if n_test:
                n_test -= 1
            else:
                n_val -= 1
        noise = rng.permutation(n)
        order = sorted(range(n), key=lambda i: (SIDES.index(group[i].side), group[i].volume_bin, noise[i]))
        ordered = [group[i].case_id for i in order]
        test = set(_systematic(ordered, n_test, rng))
        rest = [c for c in ordered if c not in test]
        val = set(_systematic(rest, n_val, rng))
        for c in ordered:
            out[c] = "test" if c in test else ("val" if c in val else "train")
    return out


def read_sources(path: Path) -> dict[str, str]:
    """``case_id -> source`` from a CSV with ``case_id`` and ``source`` columns (manifest.csv is one)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not rows or not {"case_id", "source"} <= set(rows[0]):
        raise UserError(f"{path} needs the columns case_id and source (one row per case)")
    return {r["case_id"]: r["source"] for r in rows}


def make_split(dataset: str | int, test_fraction: float = 0.1, val_fraction: float = 0.2, seed: int = 12345,
               sources_csv: Optional[Path] = None, n_volume_bins: int = 3, min_side_fraction: float = 0.1,
               force: bool = False, progress: bool = True) -> tuple[list[CaseStrata], Path]:
    """Write ``splits_final.json`` (one fold: train/val) and ``splits_test.json`` for a dataset.

    Args:
        dataset: Dataset id or name in ``nnUNet_raw``; outputs go to ``nnUNet_preprocessed/<dataset>``.
        test_fraction, val_fraction: Per source; the rest is training.
        seed: Seed of the random order within strata and the sampling starts.
        sources_csv: ``case_id,source`` CSV; default the dataset's ``manifest.csv`` if present,
            else one source for all cases.
        n_volume_bins: Lesion volume bins (quantiles over the dataset's lesioned cases).
        min_side_fraction: See :func:`lesion_side`.
        force: Replace existing split files.
        progress: Show a progress bar while reading labels.

    Returns:
        The cases with their strata and subsets, and the output folder.

    Example:
        >>> cases, folder = make_split(502, seed=1)  # doctest: +SKIP
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    from tqdm import tqdm

    from nnunet_ssl.ct.io import CaseError, read_image
    from nnunet_ssl.planning import dataset_name, require_env
    from nnunet_ssl.prepare_ssl import MANIFEST_NAME, write_csv

    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise UserError("--test-fraction and --val-fraction must be in [0, 1) with a sum below 1")
    if n_volume_bins < 1:
        raise UserError("--volume-bins must be 1 or more")
    require_env("nnUNet_raw", "nnUNet_preprocessed")
    name = dataset_name(dataset)
    raw = Path(os.environ["nnUNet_raw"]) / name
    out = Path(os.environ["nnUNet_preprocessed"]) / name
    existing = [p for p in (out / "splits_final.json", out / TEST_FILE) if p.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} exists; pass --force to replace it (models trained on the old split "
                        "would then be evaluated on cases they were trained on)")
    if not (raw / "dataset.json").is_file():
        raise UserError(f"{raw / 'dataset.json'} not found; the dataset must be an nnU-Net raw dataset")
    dataset_json = load_json(str(raw / "dataset.json"))
    files = get_filenames_of_train_images_and_targets(str(raw), dataset_json)
    if not files:
        raise UserError(f"{raw} holds no training cases")
    if sources_csv is None and (raw / MANIFEST_NAME).is_file():
        sources_csv = raw / MANIFEST_NAME
    sources = read_sources(Path(sources_csv)) if sources_csv else {}
    if sources:
        missing = sorted(set(files) - set(sources))
        if missing:
            raise UserError(f"{len(missing)} case(s) have no source in {sources_csv}, e.g. {missing[0]!r}; "
                            "add them (columns case_id,source)")
    ignore = dataset_json.get("labels", {}).get("ignore")
    cases = []
    for cid in tqdm(sorted(files), desc="split: reading labels", unit="case", disable=not progress):
        try:
            label = read_image(files[cid]["label"], pixel_type=None)
            image = read_image(files[cid]["images"][0], pixel_type=None)
        except CaseError as e:
            raise UserError(f"case {cid!r}: {e}") from None
        if label.GetDimension() != 3:
            raise UserError(f"case {cid!r}: lesion side needs 3D labels, got {label.GetDimension()}D")
        cases.append(CaseStrata(cid, sources.get(cid, "all"), lesion_side(label, image, min_side_fraction, ignore),
                                round(lesion_volume_ml(label, ignore), 3)))
    for c, b in zip(cases, volume_bins([c.lesion_volume_ml for c in cases], n_volume_bins)):
        c.volume_bin = b
    subsets = assign_subsets(cases, test_fraction, val_fraction, seed)
    for c in cases:
        c.subset = subsets[c.case_id]
    train = [c.case_id for c in cases if c.subset == "train"]
    val = [c.case_id for c in cases if c.subset == "val"]
    test = [c.case_id for c in cases if c.subset == "test"]
    if not val:
        raise UserError(f"{len(cases)} case(s) leave no validation case at --val-fraction {val_fraction}; "
                        "raise it or add cases")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "splits_final.json", "w", encoding="utf-8") as f:
        json.dump([{"train": train, "val": val}], f, indent=4)
    with open(out / TEST_FILE, "w", encoding="utf-8") as f:
        json.dump({"test": test, "seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction,
                   "stratified_by": ["source", "side", "volume_bin"],
                   "note": "held out: in no fold's train or val list of splits_final.json; do not train "
                           "on fold 'all', which uses every case"}, f, indent=4)
    write_csv(out / STRATA_FILE, [asdict(c) for c in cases],
              ("case_id", "subset", "source", "side", "lesion_volume_ml", "volume_bin"))
    return cases, out


def summary_table(cases: Sequence[CaseStrata]) -> str:
    """Counts per subset and side, one line per subset."""
    lines = [f"{'subset':<6} {'n':>4} " + " ".join(f"{s:>6}" for s in SIDES)]
    for subset in ("train", "val", "test"):
        group = [c for c in cases if c.subset == subset]
        counts = [sum(c.side == s for c in group) for s in SIDES]
        lines.append(f"{subset:<6} {len(group):>4} " + " ".join(f"{n:>6}" for n in counts))
    return "\n".join(lines)


def counts_by(cases: Sequence[CaseStrata], key: str) -> Mapping[str, Mapping[str, int]]:
    """``{value of key: {subset: count}}``."""
    out: dict[str, dict[str, int]] = {}
    for c in cases:
        out.setdefault(str(getattr(c, key)), {}).setdefault(c.subset, 0)
        out[str(getattr(c, key))][c.subset] += 1
    return out
