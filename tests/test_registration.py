"""Atlas registration (affine + B-spline) recovers a known motion of a phantom, and zones keep their side."""
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.atlas import RIGHT_OFFSET, swap_sides, synthetic_atlas
from nnunet_ssl.errors import UserError
from nnunet_ssl.registration import (dice, initial_affine, mean_surface_distance, register_atlas, warp_image,
                                     warp_labels)

SHAPE = (40, 48, 48)


def _known_motion(reference):
    """CT point -> template point: a rotation, anisotropic scaling and shift, after a smooth displacement."""
    centre = reference.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in reference.GetSize()])
    rigid = sitk.Euler3DTransform(centre, 0.06, -0.05, 0.15, (4.0, -3.5, 2.5))
    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre)
    affine.SetMatrix((np.array(rigid.GetMatrix()).reshape(3, 3) @ np.diag([1.15, 1.08, 1.12])).ravel().tolist())
    affine.SetTranslation(rigid.GetTranslation())
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in reversed(reference.GetSize())], indexing="ij")
    shift = np.stack([2.0 * np.sin(2 * np.pi * y / 48), 1.5 * np.sin(2 * np.pi * z / 40),
                      1.5 * np.cos(2 * np.pi * x / 48)], axis=-1)  # (dx, dy, dz) mm, smooth
    field = sitk.GetImageFromArray(shift, isVector=True)
    field.CopyInformation(reference)
    return sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))])


@pytest.fixture(scope="module")
def case():
    atlas = synthetic_atlas(SHAPE)
    truth = _known_motion(atlas.template)
    ct = warp_image(atlas.template, atlas.template, truth)
    rng = np.random.default_rng(0)
    noisy = sitk.GetImageFromArray(sitk.GetArrayFromImage(ct) + rng.normal(0, 3, SHAPE).astype(np.float32))
    noisy.CopyInformation(ct)
    from nnunet_ssl.ct.brain_mask import brain_mask

    ct_brain = brain_mask(noisy, min_volume_ml=0, max_volume_ml=1e9)
    return atlas, noisy, ct_brain, warp_labels(atlas.brain, noisy, truth)


def test_affine_and_bspline_recover_the_known_motion_and_zones_keep_their_side(case):
    atlas, ct, ct_brain, true_brain = case
    unregistered = mean_surface_distance(warp_labels(atlas.brain, ct, sitk.Transform()), true_brain)
    assert unregistered > 2.0  # the motion is large enough for the check to mean something

    result = register_atlas(ct, atlas.template, ct_brain, atlas.brain, "phantom")
    brain = warp_labels(atlas.brain, ct, result.transform)
    assert mean_surface_distance(brain, true_brain) < 2.0
    assert dice(brain, true_brain) > 0.9
    assert isinstance(result.transform, sitk.CompositeTransform) and result.transform.GetNumberOfTransforms() == 2

    zones = sitk.GetArrayFromImage(warp_labels(atlas.zones, ct, result.transform))
    assert set(np.unique(zones)) == set(range(2 * RIGHT_OFFSET + 1))  # every zone survives
    mid_x = np.argwhere(sitk.GetArrayViewFromImage(true_brain) > 0)[:, 2].mean()  # +x is the patient's left
    for label in range(1, 2 * RIGHT_OFFSET + 1):
        xs = np.argwhere(zones == label)[:, 2]
        on_left = xs > mid_x
        assert (on_left.mean() > 0.95) if label <= RIGHT_OFFSET else (on_left.mean() < 0.05), label


def test_initial_affine_matches_centroids_and_extents():
    small = sitk.Image([20, 20, 20], sitk.sitkUInt8)
    small[4:12, 6:14, 8:12] = 1
    large = sitk.Image([40, 40, 40], sitk.sitkUInt8)
    large.SetOrigin((-5.0, 3.0, 0.0))
    large[10:26, 10:26, 10:18] = 1  # twice the extent along each axis
    affine = initial_affine(small, large)
    # the ratio of the standard deviations of n and m evenly spaced voxels: sqrt((n^2 - 1) / (m^2 - 1))
    expected = [np.sqrt(255 / 63), np.sqrt(255 / 63), np.sqrt(63 / 15)]
    assert np.allclose(np.array(affine.GetMatrix()).reshape(3, 3), np.diag(expected), atol=1e-9)
    assert np.allclose(affine.TransformPoint((7.5, 9.5, 9.5)), (-5 + 17.5, 3 + 17.5, 13.5), atol=1e-6)


def test_blank_ct_is_refused_with_the_case_named(case):
    atlas, ct, ct_brain, _ = case
    empty = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(ct)
    with pytest.raises(UserError, match="case 'blank'.*empty"):
        register_atlas(ct, atlas.template, empty, atlas.brain, "blank")


def test_swap_sides_is_its_own_inverse():
    labels = np.arange(21).reshape(3, 7)
    assert np.array_equal(swap_sides(swap_sides(labels)), labels)
    assert np.array_equal(swap_sides(labels)[labels > 0] % RIGHT_OFFSET, labels[labels > 0] % RIGHT_OFFSET)
