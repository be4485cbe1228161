"""Reading cases and resampling: case ids, DICOM folders, input checks, physical geometry."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.ct.io import CaseError, case_id, check_ct_hu, check_volume, find_cases, read_image
from nnunet_ssl.ct.resample import resample_to_spacing, target_grid
from nnunet_ssl.errors import UserError
from nnunet_ssl.phantom import make_stroke_phantom


def _image(arr, spacing=(1.0, 1.0, 1.0), direction=None, origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(np.asarray(arr, np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def test_case_id_strips_suffixes_and_channel_index(tmp_path):
    assert case_id("a/sub-01_0000.nii.gz") == "sub-01"
    assert case_id("sub_02.nrrd") == "sub_02"
    (tmp_path / "sub-03").mkdir()
    assert case_id(tmp_path / "sub-03") == "sub-03"


def test_find_cases_skips_sidecars_and_rejects_duplicates(tmp_path):
    for name in ["b_0000.nii.gz", "a_0000.nii.gz", "a.json", ".hidden.nii.gz"]:
        (tmp_path / name).write_bytes(b"")
    assert list(find_cases(tmp_path)) == ["a", "b"]  # nnU-Net's layout: _0000 is the channel
    (tmp_path / "b_0000.nii.gz").rename(tmp_path / "b.nii.gz")
    assert list(find_cases(tmp_path)) == ["a_0000", "b"]  # not every file has a channel suffix
    (tmp_path / "b.nrrd").write_bytes(b"")
    with pytest.raises(UserError, match="both give case id 'b'"):
        find_cases(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        find_cases(tmp_path / "missing")


def test_read_dicom_series_folder_keeps_values_and_geometry(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, (10, 12, 14)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 2.5))
    img.SetOrigin((-10.0, 20.0, 30.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(arr.shape[0]):
        sl = img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {"0008|0060": "CT", "0020|000e": "1.2.826.0.1.3680043.2.1125.1",
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": "\\".join(map(str, pos)),
                           "0020|0013": str(k + 1), "0008|0018": f"1.2.826.0.1.3680043.2.1125.2.{k}"}.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    back = read_image(tmp_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr.astype(np.float32))
    np.testing.assert_allclose(back.GetSpacing(), (0.8, 0.8, 2.5), atol=1e-4)
    np.testing.assert_allclose(back.GetOrigin(), (-10.0, 20.0, 30.0), atol=1e-4)


def test_unreadable_file_is_a_case_error(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(CaseError, match="cannot read broken.nii.gz"):
        read_image(bad)


def test_check_volume_rejects_2d_and_single_slices():
    with pytest.raises(CaseError, match="2D"):
        check_volume(sitk.Image([64, 64], sitk.sitkFloat32))
    with pytest.raises(CaseError, match="at least 8 voxels"):
        check_volume(sitk.Image([64, 64, 1], sitk.sitkFloat32))
    check_volume(sitk.Image([64, 64, 20], sitk.sitkFloat32))


def test_check_ct_hu_accepts_ct_and_rejects_mri_like_intensities():
    ph = make_stroke_phantom(shape=(24, 32, 32), seed=0)
    check_ct_hu(_image(ph.image))
    mri = (ph.image - ph.image.min()) / np.ptp(ph.image) * 1000.0  # 0..1000, no air
    with pytest.raises(CaseError, match="do not look like CT in HU"):
        check_ct_hu(_image(mri))
    no_bone = np.clip(ph.image, -1000, 80)
    with pytest.raises(CaseError, match="no bone"):
        check_ct_hu(_image(no_bone))


@pytest.mark.parametrize("direction", [None, (-1, 0, 0, 0, -1, 0, 0, 0, 1)], ids=["LPS", "RAS"])
def test_resampling_keeps_the_physical_box_and_a_marker(direction):
    arr = np.zeros((12, 40, 40), np.float32)
    arr[6, 10:14, 30:34] = 1.0  # 2 x 2 mm in-plane, one 5 mm slice
    img = _image(arr, spacing=(0.5, 0.5, 5.0), direction=direction, origin=(12.0, -7.0, 40.0))
    out = resample_to_spacing(img, (1.0, 1.0, 1.0), is_mask=True)
    assert out.GetSize() == (20, 20, 60)
    assert out.GetDirection() == img.GetDirection()

    def corner(im):  # physical position of the outer corner of voxel 0
        return np.array(im.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5, -0.5]))

    np.testing.assert_allclose(corner(out), corner(img), atol=1e-6)
    marker_in = np.array(img.TransformContinuousIndexToPhysicalPoint((31.5, 11.5, 6.0)))
    hits = np.argwhere(sitk.GetArrayFromImage(out) > 0)[:, ::-1]
    assert len(hits) > 0
    centre_out = np.mean([out.TransformIndexToPhysicalPoint([int(v) for v in h]) for h in hits], axis=0)
    assert np.linalg.norm(centre_out - marker_in) < 1.0


def test_masks_keep_their_labels_and_images_become_float():
    arr = np.zeros((10, 10, 10), np.uint8)
    arr[2:5, 2:5, 2:5] = 3
    mask = sitk.GetImageFromArray(arr)
    out = resample_to_spacing(mask, (0.5, 0.5, 0.5), is_mask=True)
    assert set(np.unique(sitk.GetArrayFromImage(out))) == {0, 3}
    assert out.GetPixelID() == sitk.sitkUInt8
    assert resample_to_spacing(mask, (2.0, 2.0, 2.0)).GetPixelID() == sitk.sitkFloat32
    with pytest.raises(ValueError, match="positive"):
        target_grid(mask, (1.0, 0.0, 1.0))
