"""Contralateral image, mid-sagittal plane and difference image (real CT brain and phantoms)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.ct.brain_mask import brain_mask
from nnunet_ssl.ct.qc import save_qc_png
from nnunet_ssl.ct.resample import resample_like
from nnunet_ssl.ct.symmetry import (_affine_parts, _centroid, contralateral_image, difference_image,
                                    plane_from_mirror, reflection)
from nnunet_ssl.ct.synthetic import head_from_brain, insert_lesion, move, rigid_motion
from nnunet_ssl.phantom import make_stroke_phantom

DATA = Path(__file__).parent / "data"


def plane_after_motion(normal, offset, motion: sitk.Transform):
    """The plane ``n.q = d`` of an image, in the image resampled through ``motion`` (q = motion(p))."""
    a, b = _affine_parts(motion)
    return a.T @ normal, offset - float(normal @ b)


def plane_errors(est_normal, est_offset, normal, offset, point):
    """Angle between the planes (degrees) and their distance along the normal at ``point`` (mm)."""
    sign = np.sign(normal @ est_normal)
    angle = np.degrees(np.arccos(min(1.0, abs(float(normal @ est_normal)))))
    return angle, abs((normal @ point - offset) - sign * (est_normal @ point - est_offset))


def test_plane_from_an_oblique_reflection():
    n = np.array([0.95, 0.25, -0.1])
    n /= np.linalg.norm(n)
    point = np.array([3.0, -20.0, 40.0])
    a, b = _affine_parts(reflection(n, point))
    normal, offset, residual = plane_from_mirror(a, b)
    np.testing.assert_allclose(normal, n, atol=1e-9)
    assert offset == pytest.approx(float(n @ point))
    assert residual == pytest.approx(0.0, abs=1e-6)
    # a reflection followed by a 10 degree rotation about the plane normal is not a reflection
    rot = sitk.VersorTransform([float(v) for v in n], np.radians(10.0))
    _, _, residual = plane_from_mirror(np.array(rot.GetMatrix()).reshape(3, 3) @ a, b)
    assert residual == pytest.approx(10.0, abs=1e-6)


@pytest.fixture(scope="module")
def symmetric_phantom():
    ph = make_stroke_phantom(shape=(64, 64, 64), spacing=(2.5, 2.5, 2.5), side="none", noise_hu=0.5, seed=4)
    img = sitk.GetImageFromArray(ph.image)
    img.SetSpacing((2.5, 2.5, 2.5))
    return img, brain_mask(img)


@pytest.mark.parametrize("transform", ["rigid", "affine"])
def test_difference_of_a_symmetric_phantom_is_near_zero(symmetric_phantom, transform):
    img, mask = symmetric_phantom
    res = contralateral_image(img, mask, transform=transform)
    diff = difference_image(img, res.contralateral, mask)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    d = sitk.GetArrayViewFromImage(diff)
    assert abs(float(d[inside].mean())) < 0.5
    assert float(np.abs(d[inside]).mean()) < 2.0  # noise 0.5 HU, texture 8 HU apart
    assert np.all(d[~inside] == 0)
    assert res.angle_deg < 1.0 and res.similarity > 0.95
    centre_x = img.TransformContinuousIndexToPhysicalPoint([31.5, 31.5, 31.5])[0]
    assert res.offset == pytest.approx(centre_x, abs=1.0)  # the phantom's mid-plane is x = centre


@pytest.fixture(scope="module")
def real_ct_case():
    """A real CT brain with a left hemisphere lesion, then rotated 8 degrees about z and shifted."""
    head, truth = head_from_brain(sitk.ReadImage(str(DATA / "ct_brain_2mm.nii.gz")), noise_hu=2.0, seed=3)
    centre = _centroid(truth)
    # +x is the patient's left in LPS; a 12 mm hypodense (-10 HU) lesion in the left hemisphere
    head, lesion = insert_lesion(head, truth, centre + np.array([32.0, 10.0, 12.0]), radius_mm=12.0,
                                 drop_hu=10.0)
    reference = contralateral_image(head, brain_mask(head))
    motion = rigid_motion(head, angles_deg=(0.0, 0.0, 8.0), shift_mm=(4.0, -3.0, 2.0))
    moved, moved_lesion = move(head, motion), move(lesion, motion, is_mask=True)
    mask = brain_mask(moved)
    return {"reference": reference, "motion": motion, "image": moved, "lesion": moved_lesion,
            "mask": mask, "result": contralateral_image(moved, mask)}


def test_real_ct_mid_sagittal_plane_is_recovered_after_rotation(real_ct_case):
    ref, res = real_ct_case["reference"], real_ct_case["result"]
    assert ref.angle_deg < 5.0, "the CT brain template is roughly aligned with the scanner axes"
    normal, offset = plane_after_motion(ref.normal, ref.offset, real_ct_case["motion"])
    centre = _centroid(real_ct_case["mask"])
    angle_err, offset_err = plane_errors(res.normal, res.offset, normal, offset, centre)
    print(f"plane: angle error {angle_err:.2f} deg, offset error {offset_err:.2f} mm, "
          f"tilt {res.angle_deg:.2f} deg, similarity {res.similarity:.3f}")
    assert angle_err < 2.0
    assert offset_err < 2.0
    # the 8 degree rotation shows in the recovered plane
    assert abs(res.angle_deg - np.degrees(np.arccos(abs(normal[0])))) < 2.0
    assert res.angle_deg > 4.0
    assert res.similarity > 0.7 and res.residual_deg < 1.0


def test_real_ct_lesion_is_negative_in_the_difference_and_positive_in_its_mirror(real_ct_case, tmp_path):
    res, mask = real_ct_case["result"], real_ct_case["mask"]
    diff = difference_image(real_ct_case["image"], res.contralateral, mask)
    lesion = sitk.GetArrayViewFromImage(real_ct_case["lesion"]) > 0
    normal, offset = plane_after_motion(real_ct_case["reference"].normal, real_ct_case["reference"].offset,
                                        real_ct_case["motion"])
    centre = _centroid(mask)
    true_mirror = reflection(normal, centre - (normal @ centre - offset) * normal)
    mirror = sitk.GetArrayFromImage(resample_like(real_ct_case["lesion"], mask, transform=true_mirror,
                                                      is_mask=True)) > 0
    d = sitk.GetArrayViewFromImage(diff)
    assert lesion.sum() > 200 and mirror.sum() > 200 and not (lesion & mirror).any()
    in_lesion, in_mirror = float(d[lesion].mean()), float(d[mirror].mean())
    print(f"difference: lesion {in_lesion:.2f} HU, mirror {in_mirror:.2f} HU")
    assert in_lesion < -6.0 < 6.0 < in_mirror  # a 10 HU drop shows as about -10 and +10
    assert in_mirror - in_lesion > 14.0
    png = tmp_path / "qc.png"
    save_qc_png(png, real_ct_case["image"], mask, res.contralateral, diff, (res.normal, res.offset), "real CT")
    assert png.stat().st_size > 10_000

