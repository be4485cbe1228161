"""Propagating a lesion mask from a paired MRI to the CT."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.ct.brain_mask import brain_mask
from nnunet_ssl.ct.io import CaseError
from nnunet_ssl.ct.labels import propagate_label
from nnunet_ssl.ct.resample import resample_like
from nnunet_ssl.phantom import make_stroke_phantom


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def paired():
    """A CT phantom and an 'MRI' of it: monotone intensity remap, other grid, known affine offset."""
    ph = make_stroke_phantom(shape=(56, 64, 64), spacing=(3.0, 3.0, 3.0), side="right", seed=5)
    ct = sitk.GetImageFromArray(ph.image)
    ct.SetSpacing((3.0, 3.0, 3.0))
    lesion = sitk.GetImageFromArray(ph.lesion.astype(np.uint8))
    lesion.CopyInformation(ct)
    # the MRI maps HU monotonically to 0..900; it knows nothing of Hounsfield units
    mri_values = 900.0 / (1.0 + np.exp(-np.clip(ph.image - 25.0, -200, 200) / 8.0))
    mri_on_ct = sitk.GetImageFromArray(mri_values.astype(np.float32))
    mri_on_ct.CopyInformation(ct)
    offset = sitk.AffineTransform(3)
    offset.SetCenter(ct.TransformContinuousIndexToPhysicalPoint([31.5, 31.5, 27.5]))
    rot = sitk.Euler3DTransform()
    rot.SetRotation(*np.radians([4.0, -3.0, 7.0]))
    offset.SetMatrix([float(v) for v in (np.array(rot.GetMatrix()).reshape(3, 3) * 1.04).ravel()])
    offset.SetTranslation((8.0, -6.0, 5.0))
    grid = sitk.Image([76, 76, 62], sitk.sitkFloat32)
    grid.SetSpacing((2.5, 2.5, 2.8))
    grid.SetOrigin((-5.0, 4.0, 3.0))
    mri = resample_like(mri_on_ct, grid, transform=offset, default_value=0.0)
    mri_lesion = resample_like(lesion, grid, transform=offset, is_mask=True)
    return {"ct": ct, "lesion": ph.lesion, "mri": mri, "mri_lesion": mri_lesion,
            "mask": brain_mask(ct)}


@pytest.mark.parametrize("shift_mm", [0.0, 400.0], ids=["paired", "origin-40cm-away"])
def test_moved_mask_overlaps_the_true_lesion(paired, shift_mm):
    mri, mri_lesion = sitk.Image(paired["mri"]), sitk.Image(paired["mri_lesion"])
    for img in (mri, mri_lesion):  # scanners disagree on the origin: the start matches centres of mass
        img.SetOrigin([o + shift_mm for o in img.GetOrigin()])
    res = propagate_label(mri_lesion, mri, paired["ct"], paired["mask"])
    moved = sitk.GetArrayViewFromImage(res.label) > 0
    assert res.label.GetSize() == paired["ct"].GetSize()
    assert res.label.GetPixelID() == sitk.sitkUInt8
    before = sitk.GetArrayFromImage(resample_like(mri_lesion, paired["ct"], is_mask=True)) > 0
    assert dice(before, paired["lesion"]) < 0.5, "without registration the masks must not overlap well"
    assert dice(moved, paired["lesion"]) > 0.8
    assert res.coverage > 0.9


def test_mri_covering_a_thin_slab_is_reported_as_failed(paired):
    slab = paired["mri"][:, :, 25:35]  # 10 slices of 2.8 mm out of a whole head
    lesion = paired["mri_lesion"][:, :, 25:35]
    with pytest.raises(CaseError, match=r"covers \d+% of the CT brain"):
        propagate_label(lesion, slab, paired["ct"], paired["mask"])
