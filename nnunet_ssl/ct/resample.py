"""Resampling to a target voxel spacing without moving the image in physical space.

The output grid keeps the input's direction cosines (so LPS, RAS and oblique
inputs all stay as they were) and covers the same physical box: the outer corner
of the first voxel stays put, and the grid grows or shrinks on the far side by
less than one output voxel. Images are interpolated linearly, masks with nearest
neighbour.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.ct.io import CaseError
from nnunet_ssl.errors import UserError

AIR_HU = -1024.0
_AXIS_OF_LETTER = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


def parse_orientation(text: str, option: str = "--orientation") -> str | None:
    """An axis-order code (``LPS``, ``RAS``, ...) checked, upper-cased; ``None`` for ``keep``.

    Raises:
        UserError: Not three letters naming each axis (L/R, P/A, S/I) once.

    Example:
        >>> parse_orientation("ras"), parse_orientation("keep")
        ('RAS', None)
    """
    text = str(text)
    if text.lower() == "keep":
        return None
    code = text.upper()
    axes = [_AXIS_OF_LETTER.get(c) for c in code]
    if len(code) != 3 or None in axes or sorted(axes) != [0, 1, 2]:
        raise UserError(f"{option} must be three letters naming each axis once (one of L/R, one of P/A, "
                        f"one of S/I, e.g. LPS or RAS), or 'keep'; got '{text}'")
    return code


def _direction(image: sitk.Image) -> np.ndarray:
    return np.array(image.GetDirection(), float).reshape(3, 3)


def target_grid(image: sitk.Image, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> sitk.Image:
    """An empty image describing the grid ``image`` is resampled onto.

    Args:
        image: 3D input.
        spacing: Output spacing in mm, in SimpleITK's ``(x, y, z)`` order.

    Returns:
        A zero-filled float32 image with the output origin, spacing, direction and size.
    """
    old_sp = np.array(image.GetSpacing(), float)
    new_sp = np.array([float(s) for s in spacing])
    if new_sp.shape != (3,) or np.any(new_sp <= 0):
        raise ValueError(f"spacing must be three positive numbers, got {spacing}")
    extent = np.array(image.GetSize()) * old_sp
    size = np.maximum(1, np.round(extent / new_sp)).astype(int)
    direction = _direction(image)
    # origins are voxel centres: shift by half the spacing change to keep the corner
    origin = np.array(image.GetOrigin()) + direction @ ((new_sp - old_sp) / 2.0)
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing(tuple(new_sp))
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(tuple(origin))
    return grid


def resample_to_spacing(image: sitk.Image, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                        is_mask: bool = False, default_value: float | None = None) -> sitk.Image:
    """Resample an image or a mask to ``spacing``, keeping its physical placement.

    Args:
        image: 3D image.
        spacing: Output spacing in mm, ``(x, y, z)`` (SimpleITK order).
        is_mask: Nearest-neighbour interpolation and the input pixel type when true;
            linear interpolation to float32 otherwise.
        default_value: Value outside the input (air, -1024 HU, for images; 0 for masks).

    Returns:
        The resampled image.

    Example:
        >>> img = sitk.Image([64, 64, 20], sitk.sitkFloat32)
        >>> img.SetSpacing((0.5, 0.5, 5.0))
        >>> resample_to_spacing(img, (1, 1, 1)).GetSize()
        (32, 32, 100)
    """
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    grid = target_grid(image, spacing)
    if np.allclose(grid.GetSpacing(), image.GetSpacing()) and grid.GetSize() == image.GetSize():
        return image if is_mask else sitk.Cast(image, sitk.sitkFloat32)
    return resample_like(image, grid, is_mask=is_mask, default_value=default_value)


def resample_like(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
                  is_mask: bool = False, default_value: float | None = None) -> sitk.Image:
    """Resample ``image`` onto the grid of ``reference``.

    Args:
        image: Image to resample.
        reference: Image whose grid (origin, spacing, direction, size) is used.
        transform: Maps points of the reference space into the image's space
            (identity when ``None``), as in :func:`SimpleITK.Resample`.
        is_mask: Nearest neighbour and the input pixel type when true.
        default_value: Value outside the image (-1024 HU for images, 0 for masks).

    Returns:
        The resampled image.
    """
    if default_value is None:
        default_value = 0.0 if is_mask else AIR_HU
    interpolator = sitk.sitkNearestNeighbor if is_mask else sitk.sitkLinear
    pixel = image.GetPixelID() if is_mask else sitk.sitkFloat32
    return sitk.Resample(image, reference, transform or sitk.Transform(), interpolator,
                         float(default_value), pixel)


def run_registration(reg: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image,
                     initial: sitk.Transform, levels: Sequence[int], what: str) -> tuple[sitk.Transform, float]:
    """Finish setting up ``reg`` (metric, mask, sampling and optimiser already set) and run it.

    Multi-resolution with ``levels`` as shrink factors and the same values as smoothing
    sigmas in voxels, linear interpolation, optimiser scales from physical shifts, the
    initial transform copied. A failure raises :class:`~nnunet_ssl.ct.io.CaseError`
    naming ``what``. Returns the transform and the final metric value.
    """
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([int(f) for f in levels])
    reg.SetSmoothingSigmasPerLevel([float(f) for f in levels])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(initial, inPlace=False)
    try:
        out = reg.Execute(fixed, moving)
    except RuntimeError as e:
        raise CaseError(f"{what} failed: {str(e).strip().splitlines()[-1]}") from None
    return out, float(reg.GetMetricValue())
