"""Per-case metrics against values computed by hand on small anisotropic volumes.

Arrays are in numpy order (axis 0, 1, 2) and so is the spacing: (3, 1, 0.5) mm
means 3 mm along axis 0 and 0.5 mm along axis 2, a voxel of 1.5 mm^3.
"""
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from nnunet_ssl.evaluation import metrics
from nnunet_ssl.evaluation.folder import Settings, label_metrics

SPACING = (3.0, 1.0, 0.5)


def cube(shape=(12, 10, 10), start=(2, 2, 2), size=(4, 4, 4)):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return mask


@pytest.fixture
def two_lesions():
    """A 2 mL and a 4 mL box on a 1 mm^3 anisotropic grid (2 x 1 x 0.5 mm), apart from each other."""
    mask = np.zeros((24, 45, 45), bool)
    mask[2:12, 2:12, 2:22] = True    # 10*10*20 = 2000 voxels = 2 mL
    mask[2:12, 20:40, 20:40] = True  # 10*20*20 = 4000 voxels = 4 mL
    return mask, (2.0, 1.0, 0.5)


def test_voxel_volume_and_volume_in_ml():
    assert metrics.voxel_volume_ml(SPACING) == pytest.approx(0.0015)
    # 4*4*4 voxels of 1.5 mm^3 = 96 mm^3 = 0.096 mL
    assert metrics.volume_ml(cube(), SPACING) == pytest.approx(0.096)


def test_dice_of_cube_shifted_by_one_voxel():
    pred, true = cube(start=(2, 2, 2)), cube(start=(3, 2, 2))
    # overlap 3*4*4 = 48 voxels, each mask 64: 2*48/128
    assert metrics.dice(pred, true) == pytest.approx(0.75)
    assert metrics.dice(true, true) == 1.0


def test_hd95_of_plates_uses_physical_spacing():
    a = np.zeros((8, 5, 6), bool)
    b = np.zeros((8, 5, 6), bool)
    a[2], b[4] = True, True  # one-voxel plates two voxels apart along axis 0 (3 mm voxels)
    assert metrics.hd95(a, b, SPACING) == pytest.approx(6.0)
    a = np.zeros((5, 6, 8), bool)
    b = np.zeros((5, 6, 8), bool)
    a[:, :, 2], b[:, :, 5] = True, True  # three voxels apart along axis 2 (0.5 mm voxels)
    assert metrics.hd95(a, b, SPACING) == pytest.approx(1.5)


@pytest.mark.parametrize("axis, expected_mm", [(0, 6.0), (2, 1.0)])
def test_hd95_of_cube_shifted_by_two_voxels(axis, expected_mm):
    """4^3 cube shifted by k=2 voxels: hand-counted surface distances.

    Of the 56 surface voxels of one cube (64 minus the 2^3 interior), 24 lie on
    the other cube's surface (distance 0), 4 face-centre voxels of the
    overlapping face are 0.5 mm from it (one voxel along axis 2), 12 are one
    voxel away along the shift axis and the 16 of the far face are k voxels
    away: k * spacing. Sorted, the 95th percentile (position 0.95 * 55 = 52.25)
    falls among those 16, so HD95 = k * spacing[axis].
    """
    start = [2, 2, 2]
    shifted = list(start)
    shifted[axis] += 2
    pred, true = cube(start=tuple(start)), cube(start=tuple(shifted))
    d = np.sort(metrics.surface_distances(pred, true, SPACING))
    assert d.size == 56
    assert np.count_nonzero(d == 0) == 24
    assert d.max() == pytest.approx(expected_mm)
    assert np.count_nonzero(np.isclose(d, expected_mm)) == 16
    assert metrics.hd95(pred, true, SPACING) == pytest.approx(expected_mm)
    assert metrics.hd95(true, pred, SPACING) == pytest.approx(expected_mm)


def test_hd95_matches_brute_force_on_ellipsoids():
    grid = np.indices((14, 16, 18)).astype(float)
    a = ((grid[0] - 6) / 4) ** 2 + ((grid[1] - 8) / 5) ** 2 + ((grid[2] - 8) / 6) ** 2 <= 1
    b = ((grid[0] - 7) / 3) ** 2 + ((grid[1] - 8) / 6) ** 2 + ((grid[2] - 10) / 5) ** 2 <= 1

    def surface_points(mask):
        # surface: foreground voxel with a background face neighbour, found without scipy.ndimage
        padded = np.pad(mask, 1)
        inner = padded[1:-1, 1:-1, 1:-1].copy()
        for axis in range(3):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(mask & ~inner) * np.asarray(SPACING)

    pa, pb = surface_points(a), surface_points(b)
    d_ab, d_ba = cdist(pa, pb).min(axis=1), cdist(pb, pa).min(axis=1)
    expected = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assert metrics.hd95(a, b, SPACING) == pytest.approx(expected)
    assert expected > 0


def test_case_metrics_volumes_and_avd_in_ml():
    pred = cube(size=(4, 4, 4))   # 64 voxels * 1.5 mm^3 = 0.096 mL
    true = cube(size=(5, 4, 4))   # 80 voxels = 0.12 mL
    m = metrics.case_metrics(pred, true, SPACING)
    assert m["volume_pred_ml"] == pytest.approx(0.096)
    assert m["volume_true_ml"] == pytest.approx(0.12)
    assert m["avd_ml"] == pytest.approx(0.024)
    assert m["dice"] == pytest.approx(2 * 64 / 144)
    assert m["lesions_pred"] == m["lesions_true"] == 1


def test_both_empty_is_perfect_agreement():
    empty = np.zeros((6, 6, 6), bool)
    m = metrics.case_metrics(empty, empty, SPACING)
    assert (m["dice"], m["hd95_mm"], m["avd_ml"], m["lesions_pred"], m["lesions_true"]) == (1.0, 0.0, 0.0, 0, 0)


@pytest.mark.parametrize("empty_side", ["pred", "true"])
def test_one_empty_gives_dice_zero_and_undefined_hd95(empty_side):
    full, empty = cube(), np.zeros((12, 10, 10), bool)
    pred, true = (empty, full) if empty_side == "pred" else (full, empty)
    m = metrics.case_metrics(pred, true, SPACING)
    assert m["dice"] == 0.0
    assert math.isnan(m["hd95_mm"])
    assert m["avd_ml"] == pytest.approx(0.096)


def test_lesion_count_depends_on_connectivity():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # touching only at a corner
    assert metrics.label_components(mask, 26)[1] == 1
    assert metrics.label_components(mask, 6)[1] == 2
    with pytest.raises(ValueError):
        metrics.label_components(mask, 8)


def test_min_lesion_filter_keeps_only_the_4ml_component(two_lesions):
    mask, spacing = two_lesions
    assert metrics.volume_ml(mask, spacing) == pytest.approx(6.0)
    kept = metrics.remove_small_lesions(mask, spacing, 3.0)
    assert metrics.volume_ml(kept, spacing) == pytest.approx(4.0)
    assert kept[2:12, 20:40, 20:40].all() and not kept[2:12, 2:12, 2:22].any()
    # a component of exactly the threshold stays; threshold 0 is a no-op
    assert metrics.volume_ml(metrics.remove_small_lesions(mask, spacing, 2.0), spacing) == pytest.approx(6.0)
    assert metrics.remove_small_lesions(mask, spacing, 0) is mask


def test_min_lesion_filter_in_label_metrics(two_lesions):
    true, spacing = two_lesions
    pred = np.zeros_like(true)
    pred[2:12, 20:40, 20:40] = True  # only the 4 mL lesion found
    plain = label_metrics(pred, true, spacing, Settings())
    assert plain["dice"] == pytest.approx(2 * 4000 / (4000 + 6000))
    assert plain["lesions_true"] == 2
    filtered = label_metrics(pred, true, spacing, Settings(min_lesion_ml=3.0))
    assert filtered["dice"] == 1.0 and filtered["hd95_mm"] == 0.0
    assert filtered["volume_true_ml"] == pytest.approx(4.0) and filtered["lesions_true"] == 1

    # a 2 mL false positive counts unless the prediction is filtered too
    pred_fp = true.copy()
    truth_big = np.zeros_like(true)
    truth_big[2:12, 20:40, 20:40] = True
    only_truth = label_metrics(pred_fp, truth_big, spacing, Settings(min_lesion_ml=3.0))
    assert only_truth["volume_pred_ml"] == pytest.approx(6.0) and only_truth["lesions_pred"] == 2
    both = label_metrics(pred_fp, truth_big, spacing, Settings(min_lesion_ml=3.0, filter_prediction=True))
    assert both["volume_pred_ml"] == pytest.approx(4.0) and both["dice"] == 1.0


def test_bounding_box_crop_gives_the_same_metrics_as_full_volume():
    pred, true = cube(start=(2, 2, 2)), cube(start=(3, 3, 2), size=(5, 4, 3))
    cropped = label_metrics(pred, true, SPACING, Settings())
    full = metrics.case_metrics(pred, true, SPACING)
    assert cropped == pytest.approx(full)
    assert full["hd95_mm"] > 0
