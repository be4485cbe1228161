"""Brain extraction (skull stripping) for non-contrast head CT.

:func:`brain_mask` is the one entry point. Its built-in method needs nothing
beyond SimpleITK and works on CT in Hounsfield units:

1. light Gaussian smoothing (``smoothing_mm``) so that noise does not punch
   holes into the intensity window;
2. a soft-tissue window (``hu_range``, default -10..80 HU: CSF, grey and white
   matter, hypodense lesions) minus bone (above ``bone_hu``) grown by
   ``bone_margin_mm`` (when that is at least one voxel), which removes the
   partial-volume rim on the inner table of the skull;
3. a morphological opening with a ball of ``opening_mm`` radius, which cuts the
   thin bridges through the skull foramina and the orbits that join the brain
   to the scalp, muscles and eyes;
4. the largest connected component, which in a head CT is the intracranial
   content;
5. growing that component back by the opening radius, restricted to the window
   mask, to recover the cortical edge that the opening shaved off;
6. filling enclosed holes (ventricles below the window, calcifications);
7. a plausibility check of the volume (``min_volume_ml``..``max_volume_ml``).

The mask covers the intracranial soft tissue including the CSF spaces, which
is what the later steps need (registration mask, difference image support).

External tools are used when asked for, or with ``method="auto"`` when
SynthStrip (``mri_synthstrip``) is on the ``PATH``. HD-BET (``hd-bet``) is only
used when asked for explicitly because it was trained on MRI.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.ct.io import CaseError, read_image
from nnunet_ssl.ct.resample import resample_like, resample_to_spacing
from nnunet_ssl.errors import UserError

METHODS = ("auto", "builtin", "synthstrip", "hdbet")
EXECUTABLES = {"synthstrip": "mri_synthstrip", "hdbet": "hd-bet"}


def available_methods() -> dict[str, str | None]:
    """Which external brain extraction tools are installed: ``{method: executable path or None}``."""
    return {m: shutil.which(exe) for m, exe in EXECUTABLES.items()}


def resolve_method(method: str = "auto") -> str:
    """Turn ``method`` into the method that will run.

    Args:
        method: ``"auto"`` (SynthStrip when installed, else built-in), ``"builtin"``,
            ``"synthstrip"`` or ``"hdbet"``.

    Returns:
        ``"builtin"``, ``"synthstrip"`` or ``"hdbet"``.

    Raises:
        UserError: Unknown method, or an external tool that is not on the ``PATH``.

    Example:
        >>> resolve_method("builtin")
        'builtin'
    """
    if method not in METHODS:
        raise UserError(f"unknown brain mask method {method!r}; choose one of {', '.join(METHODS)}")
    found = available_methods()
    if method == "auto":
        return "synthstrip" if found["synthstrip"] else "builtin"
    if method != "builtin" and not found[method]:
        raise UserError(f"brain mask method {method!r} needs `{EXECUTABLES[method]}` on the PATH; "
                        "install it or use --brain-mask builtin")
    return method


def _ball(image: sitk.Image, radius_mm: float) -> list[int]:
    return [max(1, int(round(radius_mm / s))) for s in image.GetSpacing()]


def builtin_brain_mask(image: sitk.Image, hu_range: Sequence[float] = (-10.0, 80.0),
                       bone_hu: float = 250.0, opening_mm: float = 3.0, smoothing_mm: float = 1.0,
                       bone_margin_mm: float = 1.0, work_spacing_mm: float | None = 2.0) -> sitk.Image:
    """The built-in CT brain mask (see the module docstring for the steps and parameters).

    ``work_spacing_mm``: the opening and the component search run on a copy at this
    spacing when the image is finer (several times faster at 1 mm; ``None`` to stay
    on the input grid). Thresholds, regrowth and hole filling use the input grid.
    """
    smooth = sitk.Cast(image, sitk.sitkFloat32)
    if smoothing_mm > 0:
        smooth = sitk.SmoothingRecursiveGaussian(smooth, smoothing_mm)
    window = sitk.BinaryThreshold(smooth, float(hu_range[0]), float(hu_range[1]), 1, 0)
    bone = sitk.BinaryThreshold(smooth, float(bone_hu), 1e9, 1, 0)
    grow = [int(round(bone_margin_mm / s)) for s in image.GetSpacing()]
    if min(grow) > 0:  # on coarse grids a one-voxel margin would eat into the brain
        bone = sitk.BinaryDilate(bone, grow, sitk.sitkBall)
    candidate = sitk.And(window, bone == 0)

    coarse = candidate
    if work_spacing_mm and min(image.GetSpacing()) < work_spacing_mm:
        small = resample_to_spacing(sitk.Cast(candidate, sitk.sitkFloat32), [work_spacing_mm] * 3,
                                    default_value=0.0)
        coarse = sitk.BinaryThreshold(small, 0.5, 2.0, 1, 0)
    opened = sitk.BinaryMorphologicalOpening(coarse, _ball(coarse, opening_mm), sitk.sitkBall)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(opened), sortByObjectSize=True)
    largest = resample_like(components == 1, image, is_mask=True)
    regrow_mm = opening_mm + max(coarse.GetSpacing())  # undo the opening (and the coarse grid)
    grown = sitk.And(sitk.BinaryDilate(largest, _ball(image, regrow_mm), sitk.sitkBall), candidate)
    return sitk.Cast(sitk.BinaryFillhole(grown), sitk.sitkUInt8)


def _external_brain_mask(image: sitk.Image, method: str, timeout_s: float = 1800.0) -> sitk.Image:
    exe = available_methods()[method]
    if exe is None:
        raise CaseError(f"`{EXECUTABLES[method]}` is not on the PATH")
    with tempfile.TemporaryDirectory(prefix="nnunet_ssl_bet_") as tmp:
        src, out = Path(tmp) / "ct.nii.gz", Path(tmp) / "out"
        out.mkdir()
        sitk.WriteImage(image, str(src))
        if method == "synthstrip":
            cmd = [exe, "-i", str(src), "-m", str(out / "mask.nii.gz")]
        else:  # HD-BET writes <out>_bet.nii.gz and a *mask* file, depending on version
            cmd = [exe, "-i", str(src), "-o", str(out / "ct_bet.nii.gz"), "--save_bet_mask"]
        proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout_s)
        masks = sorted(out.glob("*mask*.nii*"))
        if proc.returncode != 0 or not masks:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no mask written"]
            raise CaseError(f"{EXECUTABLES[method]} failed (exit {proc.returncode}): {tail[0]}")
        mask = read_image(masks[0], pixel_type=None)
    # tools may reorient or crop: put the mask back onto the input grid
    mask = sitk.Resample(mask > 0, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return mask


def brain_mask(image: sitk.Image, method: str = "builtin", hu_range: Sequence[float] = (-10.0, 80.0),
               bone_hu: float = 250.0, opening_mm: float = 3.0, smoothing_mm: float = 1.0,
               min_volume_ml: float = 200.0, max_volume_ml: float = 2500.0) -> sitk.Image:
    """Brain (intracranial soft tissue) mask of a head CT in HU.

    Args:
        image: 3D head CT in Hounsfield units, any spacing and orientation.
        method: ``"builtin"``, ``"synthstrip"``, ``"hdbet"`` or ``"auto"``
            (see :func:`resolve_method`).
        hu_range: Soft-tissue window of the built-in method, in HU.
        bone_hu: Threshold for bone in HU (built-in method).
        opening_mm: Radius of the opening ball in mm (built-in method); larger cuts
            wider bridges to the scalp but rounds off more of the brain's surface
            before it is grown back.
        smoothing_mm: Gaussian sigma in mm applied before thresholding (built-in).
        min_volume_ml: Smaller masks are rejected as failed.
        max_volume_ml: Larger masks are rejected as failed (scalp leaked in).

    Returns:
        A ``sitk.sitkUInt8`` mask (1 = brain) on the grid of ``image``.

    Raises:
        CaseError: The mask volume is implausible or an external tool failed.

    Example:
        >>> ct = sitk.ReadImage("head_ct.nii.gz", sitk.sitkFloat32)  # doctest: +SKIP
        >>> mask = brain_mask(ct)  # doctest: +SKIP
        >>> skull_stripped = sitk.Mask(ct, mask, outsideValue=0)  # doctest: +SKIP
    """
    method = resolve_method(method)
    if method == "builtin":
        mask = builtin_brain_mask(image, hu_range, bone_hu, opening_mm, smoothing_mm)
    else:
        mask = _external_brain_mask(image, method)
    volume = mask_volume_ml(mask)
    if not min_volume_ml <= volume <= max_volume_ml:
        raise CaseError(f"brain mask volume {volume:.0f} mL outside the plausible range "
                        f"{min_volume_ml:.0f}..{max_volume_ml:.0f} mL ({method} method)")
    return mask


def mask_volume_ml(mask: sitk.Image) -> float:
    """Volume of the non-zero voxels of ``mask`` in millilitres."""
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * voxel_ml
