"""Per-case segmentation metrics for one foreground label.

All functions take boolean numpy arrays in array order together with the voxel
spacing in millimetres in the same order (for an image read with SimpleITK that
is ``GetSpacing()[::-1]``). Volumes are in millilitres, distances in millimetres.

Conventions for empty masks. Metrics Reloaded (Maier-Hein et al., Nature
Methods 2024) points out that Dice and boundary distances are undefined when
the reference is empty and asks for a fixed, reported way of handling it; ours:

* both masks empty: Dice 1.0 and HD95 0.0 mm (perfect agreement on "nothing
  here"; these cases count in every summary);
* exactly one mask empty: Dice 0.0 and HD95 NaN (there is no surface to measure
  a distance to; summaries leave NaN out and report how many were left out).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

#: The metrics of one case and label, in the order of the per-case CSV columns.
METRIC_NAMES = ("dice", "hd95_mm", "avd_ml", "volume_pred_ml", "volume_true_ml",
                "lesions_pred", "lesions_true")


def _structure(connectivity: int) -> np.ndarray:
    """3D neighbourhood: 6 (faces), 18 (faces and edges) or 26 (also corners)."""
    rank = {6: 1, 18: 2, 26: 3}.get(connectivity)
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return ndimage.generate_binary_structure(3, rank)


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in millilitres.

    Example:
        >>> voxel_volume_ml((3.0, 1.0, 0.5))
        0.0015
    """
    return float(np.prod(spacing)) / 1000.0


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a mask in millilitres (voxel count times voxel volume).

    Example:
        >>> volume_ml(np.ones((10, 10, 10), bool), (1.0, 1.0, 1.0))
        1.0
    """
    return int(np.count_nonzero(mask)) * voxel_volume_ml(spacing)


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice similarity coefficient ``2|P∩T| / (|P|+|T|)``; 1.0 when both are empty.

    Example:
        >>> a = np.zeros((4, 4, 4), bool); a[:2] = True
        >>> dice(a, a)
        1.0
    """
    n_pred, n_true = int(np.count_nonzero(pred)), int(np.count_nonzero(true))
    if n_pred + n_true == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & true)) / (n_pred + n_true)


def _surface(mask: np.ndarray) -> np.ndarray:
    # A surface voxel is a foreground voxel with a background face neighbour;
    # outside the array counts as background (border_value=0).
    eroded = ndimage.binary_erosion(mask, structure=_structure(6), border_value=0)
    return mask & ~eroded


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances in mm from every surface voxel of ``a`` to the nearest surface voxel of ``b``.

    Both masks must be non-empty. The work is done on the bounding box of the
    two masks (plus one voxel of background), which gives the same distances as
    the full volume because every surface voxel lies inside that box.

    Example:
        >>> a = np.zeros((5, 1, 1), bool); a[1] = True
        >>> b = np.zeros((5, 1, 1), bool); b[3] = True
        >>> surface_distances(a, b, (2.0, 1.0, 1.0)).tolist()
        [4.0]
    """
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    union = a | b
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(union))
    a_box = np.pad(a[box], 1)
    b_box = np.pad(b[box], 1)
    surf_a, surf_b = _surface(a_box), _surface(b_box)
    # EDT gives each voxel its distance to the nearest zero, so zeros mark b's surface.
    dist_to_b = ndimage.distance_transform_edt(~surf_b, sampling=[float(s) for s in spacing])
    return dist_to_b[surf_a]


def hd95(pred: np.ndarray, true: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile Hausdorff distance in mm (symmetric).

    The larger of the two directed 95th percentiles of surface distances
    (prediction to reference and reference to prediction), as in MedPy and
    DeepMind's ``surface-distance``. Percentiles use numpy's default linear
    interpolation. Both empty -> 0.0; exactly one empty -> NaN.

    Example:
        >>> a = np.zeros((6, 3, 3), bool); a[1] = True
        >>> b = np.zeros((6, 3, 3), bool); b[3] = True
        >>> hd95(a, b, (3.0, 1.0, 0.5))
        6.0
    """
    has_pred, has_true = bool(pred.any()), bool(true.any())
    if not has_pred and not has_true:
        return 0.0
    if not has_pred or not has_true:
        return float("nan")
    d_pt = surface_distances(pred, true, spacing)
    d_tp = surface_distances(true, pred, spacing)
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def label_components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Connected components (lesions) of a mask: ``(labelled array, count)``.

    Example:
        >>> m = np.zeros((5, 5, 5), bool); m[0, 0, 0] = m[4, 4, 4] = True
        >>> label_components(m)[1]
        2
    """
    labelled, count = ndimage.label(mask, structure=_structure(connectivity))
    return labelled, int(count)


def remove_small_lesions(mask: np.ndarray, spacing: Sequence[float], min_ml: float,
                         connectivity: int = 26) -> np.ndarray:
    """Drop connected components smaller than ``min_ml`` millilitres.

    A component of exactly ``min_ml`` is kept. ``min_ml <= 0`` returns the mask unchanged.

    Example:
        >>> m = np.zeros((20, 20, 20), bool); m[:10, :10, :10] = True; m[15, 15, 15] = True
        >>> int(remove_small_lesions(m, (1.0, 1.0, 1.0), 0.5).sum())
        1000
    """
    if min_ml <= 0 or not mask.any():
        return mask
    labelled, count = label_components(mask, connectivity)
    sizes_ml = np.bincount(labelled.ravel(), minlength=count + 1) * voxel_volume_ml(spacing)
    # Small tolerance so a component of exactly min_ml is not lost to rounding.
    keep = sizes_ml >= min_ml * (1 - 1e-9)
    keep[0] = False
    return keep[labelled]


def case_metrics(pred: np.ndarray, true: np.ndarray, spacing: Sequence[float],
                 connectivity: int = 26) -> dict[str, float]:
    """All per-case metrics of one label (the keys of :data:`METRIC_NAMES`).

    Example:
        >>> a = np.zeros((4, 4, 4), bool); a[1:3, 1:3, 1:3] = True
        >>> m = case_metrics(a, a, (1.0, 1.0, 1.0))
        >>> m["dice"], m["hd95_mm"], m["avd_ml"], m["lesions_true"]
        (1.0, 0.0, 0.0, 1)
    """
    pred = np.asarray(pred, bool)
    true = np.asarray(true, bool)
    v_pred, v_true = volume_ml(pred, spacing), volume_ml(true, spacing)
    return {
        "dice": dice(pred, true),
        "hd95_mm": hd95(pred, true, spacing),
        "avd_ml": abs(v_pred - v_true),
        "volume_pred_ml": v_pred,
        "volume_true_ml": v_true,
        "lesions_pred": label_components(pred, connectivity)[1],
        "lesions_true": label_components(true, connectivity)[1],
    }
