"""Test and benchmark inputs built around a real skull-stripped CT brain.

A skull-stripped brain CT (air outside the brain) is wrapped in a synthetic CSF
layer, skull and scalp so that it looks like a raw head CT to the pipeline; a
hypodense lesion can be added in one hemisphere and the head can be moved by a
known rigid transform. The repository's tests use the CT brain shipped in
``tests/data`` (see the README there for its source and licence).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.ct.resample import AIR_HU, resample_like, resample_to_spacing

CSF_HU = 8.0


def head_from_brain(brain_ct: sitk.Image, spacing: Sequence[float] | None = None, pad_mm: float = 20.0,
                    csf_mm: float = 2.0, skull_mm: float = 6.0, scalp_mm: float = 4.0,
                    noise_hu: float = 2.0, seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """Wrap a skull-stripped CT brain in CSF, skull and scalp.

    Args:
        brain_ct: CT in HU with air (below -500 HU) outside the brain.
        spacing: Resample to this ``(x, y, z)`` spacing first (linear), if given.
        pad_mm: Air margin added on every side.
        csf_mm, skull_mm, scalp_mm: Thickness of the shells around the brain.
        noise_hu: Standard deviation of added Gaussian noise.
        seed: Seed of the noise.

    Returns:
        ``(head CT, brain mask)`` on the same grid; the mask is the input brain.

    Example:
        >>> head, brain = head_from_brain(sitk.ReadImage("tests/data/ct_brain_2mm.nii.gz"))  # doctest: +SKIP
    """
    img = sitk.Cast(brain_ct, sitk.sitkFloat32)
    inside = sitk.Cast(img > -500, sitk.sitkFloat32)
    # CSF around the brain, so that interpolation blends the cortex with CSF rather than air
    img = sitk.Mask(img, sitk.Cast(inside, sitk.sitkUInt8), outsideValue=CSF_HU)
    if spacing is not None:
        img = resample_to_spacing(img, spacing, default_value=CSF_HU)
        inside = resample_to_spacing(inside, spacing, default_value=0.0)
    pad = [int(np.ceil(pad_mm / s)) for s in img.GetSpacing()]
    img = sitk.ConstantPad(img, pad, pad, CSF_HU)
    brain = sitk.ConstantPad(inside, pad, pad, 0.0) > 0.5
    dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        brain, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
    arr = sitk.GetArrayFromImage(img)
    out = arr.copy()
    outside = dist > 0
    out[outside & (dist <= csf_mm)] = CSF_HU
    out[(dist > csf_mm) & (dist <= csf_mm + skull_mm)] = 1200.0
    out[(dist > csf_mm + skull_mm) & (dist <= csf_mm + skull_mm + scalp_mm)] = 45.0
    out[dist > csf_mm + skull_mm + scalp_mm] = AIR_HU
    rng = np.random.default_rng(seed)
    out = out + rng.normal(0.0, noise_hu, out.shape).astype(np.float32)
    head = sitk.GetImageFromArray(out.astype(np.float32))
    head.CopyInformation(img)
    return head, sitk.Cast(brain, sitk.sitkUInt8)


def insert_lesion(image: sitk.Image, brain: sitk.Image, centre: Sequence[float], radius_mm: float = 12.0,
                  drop_hu: float = 10.0) -> tuple[sitk.Image, sitk.Image]:
    """Lower HU by ``drop_hu`` in a ball (physical ``centre``, LPS mm) inside the brain.

    Returns:
        ``(image with lesion, lesion mask)``.
    """
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in reversed(image.GetSize())], indexing="ij"), -1)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    # numpy order is (z, y, x); physical = origin + D @ (spacing * (x, y, z))
    xyz = idx[..., ::-1] * np.array(image.GetSpacing())
    phys = np.array(image.GetOrigin()) + xyz @ direction.T
    ball = np.linalg.norm(phys - np.asarray(centre, float), axis=-1) <= radius_mm
    lesion = ball & (sitk.GetArrayViewFromImage(brain) > 0)
    arr = sitk.GetArrayFromImage(image)
    arr[lesion] -= float(drop_hu)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    mask = sitk.GetImageFromArray(lesion.astype(np.uint8))
    mask.CopyInformation(image)
    return out, mask


def rigid_motion(image: sitk.Image, angles_deg: Sequence[float] = (0.0, 0.0, 8.0),
                 shift_mm: Sequence[float] = (3.0, -2.0, 1.0)) -> sitk.Euler3DTransform:
    """A rigid transform about the image centre (rotations about x, y, z in degrees, then shift).

    Resampling an image with it (``resample_like(image, image, transform=t)``) moves
    the anatomy by the inverse motion; points map as ``p_moved -> t(p_moved) = p_original``.
    """
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
    t = sitk.Euler3DTransform()
    t.SetCenter(centre)
    t.SetRotation(*[float(np.radians(a)) for a in angles_deg])
    t.SetTranslation([float(s) for s in shift_mm])
    return t


def move(image: sitk.Image, transform: sitk.Transform, is_mask: bool = False) -> sitk.Image:
    """Resample ``image`` on its own grid through ``transform`` (see :func:`rigid_motion`)."""
    return resample_like(image, image, transform=transform, is_mask=is_mask)
