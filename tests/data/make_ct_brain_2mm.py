"""Regenerate ``ct_brain_2mm.nii.gz`` from the TotalSegmentator wheel (not run by the tests).

Usage::

    pip download --no-deps totalsegmentator==2.18.0 -d /tmp/ts
    python -m zipfile -e /tmp/ts/totalsegmentator-2.18.0-py3-none-any.whl /tmp/ts/x
    python tests/data/make_ct_brain_2mm.py /tmp/ts/x/totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz

The source is a skull-stripped CT brain template whose background is 0. We keep
the brain, resample it to 2 mm, and set everything outside the brain to air
(-1024 HU) so that the tests can wrap it in a synthetic skull and scalp.
"""
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

src = sitk.ReadImage(sys.argv[1], sitk.sitkFloat32)
arr = sitk.GetArrayFromImage(src)
labels, _ = ndimage.label(arr != 0)
brain = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
brain = ndimage.binary_fill_holes(brain)
mask = sitk.GetImageFromArray(brain.astype(np.float32))
mask.CopyInformation(src)

size = [int(round(n * s / 2.0)) for n, s in zip(src.GetSize(), src.GetSpacing())]
# keep the physical extent: the corner of the first voxel stays where it was
corner = np.array(src.GetOrigin()) - 0.5 * np.array(src.GetDirection()).reshape(3, 3) @ np.array(src.GetSpacing())
origin = corner + 0.5 * np.array(src.GetDirection()).reshape(3, 3) @ np.full(3, 2.0)
ref = sitk.Image(size, sitk.sitkFloat32)
ref.SetSpacing((2.0, 2.0, 2.0))
ref.SetDirection(src.GetDirection())
ref.SetOrigin(tuple(origin))
img = sitk.GetArrayFromImage(sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0))
msk = sitk.GetArrayFromImage(sitk.Resample(mask, ref, sitk.Transform(), sitk.sitkLinear, 0.0)) > 0.5
out_arr = np.where(msk, img, -1024.0).round().astype(np.int16)
out = sitk.GetImageFromArray(out_arr)
out.CopyInformation(ref)
dst = Path(__file__).with_name("ct_brain_2mm.nii.gz")
sitk.WriteImage(out, str(dst), useCompression=True)
print(dst, out.GetSize(), dst.stat().st_size, "bytes")
