"""Moving lesion masks drawn on MRI (DWI, ADC) into the space of the paired CT.

The MRI is registered to the CT with a brain-masked, multi-resolution Mattes
mutual information metric (the two modalities share no intensity scale): a
rigid stage for the gross pose, then an affine refinement. The lesion mask then
follows the same transform with nearest-neighbour interpolation, straight onto
the CT's grid (one interpolation only).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.ct.io import CaseError
from nnunet_ssl.ct.resample import resample_like, resample_to_spacing, run_registration


@dataclass
class PropagationResult:
    """Outcome of :func:`propagate_label`.

    Attributes:
        label: The lesion mask on the CT grid.
        transform: Maps CT points to MRI points (as used for resampling).
        metric: Final Mattes mutual information value (more negative is better).
        coverage: Fraction of the CT brain mask covered by the moved MRI foreground;
            a registration that slid the MRI off the CT gives a low value.
    """

    label: sitk.Image
    transform: sitk.Transform
    metric: float
    coverage: float


def _foreground(image: sitk.Image) -> sitk.Image:
    """Otsu foreground of an MRI (the head, or the brain of a skull-stripped image), holes filled."""
    fg = sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1, 128)
    return sitk.Cast(sitk.BinaryFillhole(fg), sitk.sitkUInt8)


def register_mri_to_ct(mri: sitk.Image, ct: sitk.Image, ct_mask: sitk.Image, work_spacing_mm: float = 2.0,
                       ct_window: tuple[float, float] = (-20.0, 100.0), bins: int = 32,
                       sampling: float = 0.25, seed: int = 7) -> tuple[sitk.Transform, float]:
    """Affine, brain-masked mutual information registration of an MRI to a CT.

    Args:
        mri: Moving image (any MRI contrast, any grid).
        ct: Fixed image in HU.
        ct_mask: Brain mask on the CT grid; the metric is evaluated in it (grown by 4 mm).
        work_spacing_mm: The CT is resampled to this spacing for the registration.
        ct_window: CT intensities are clipped to this window, so that brain
            tissue rather than bone drives the metric.
        bins: Histogram bins of the Mattes metric.
        sampling: Fraction of the masked voxels sampled per iteration.
        seed: Seed of the sampling.

    Returns:
        ``(transform, metric)``: the transform maps CT points to MRI points.

    Example:
        >>> t, mi = register_mri_to_ct(dwi, ct, brain_mask(ct))  # doctest: +SKIP
    """
    # never finer than the CT itself: upsampling would only cost time
    work_sp = [max(work_spacing_mm, sp) for sp in ct.GetSpacing()]
    fixed = sitk.Clamp(resample_to_spacing(ct, work_sp), sitk.sitkFloat32, *ct_window)
    fmask = resample_like(ct_mask, fixed, is_mask=True)
    fmask = sitk.Cast(sitk.BinaryDilate(fmask > 0, [2, 2, 2], sitk.sitkBall), sitk.sitkUInt8)
    moving = sitk.Cast(mri, sitk.sitkFloat32)

    # start by matching the centres of mass of the CT brain and the MRI foreground
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(fmask)
    c_ct = np.array(stats.GetCentroid(1))
    stats.Execute(_foreground(moving))
    if not stats.HasLabel(1):
        raise CaseError("MRI has no foreground (constant image?)")
    c_mri = np.array(stats.GetCentroid(1))

    def run(initial: sitk.Transform, shrink: list[int]) -> tuple[sitk.Transform, float]:
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
        reg.SetMetricFixedMask(fmask)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(sampling, seed)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0, minStep=0.001, numberOfIterations=200, relaxationFactor=0.8)
        out, metric = run_registration(reg, fixed, moving, initial, shrink, "MRI to CT registration")
        if out.GetName() == "CompositeTransform":
            out = sitk.CompositeTransform(out).GetNthTransform(0)
        return out, metric

    rigid = sitk.Euler3DTransform()
    rigid.SetCenter([float(v) for v in c_ct])
    rigid.SetTranslation([float(v) for v in c_mri - c_ct])
    rigid, _ = run(rigid, [4, 2, 1])
    rigid = sitk.Euler3DTransform(rigid)
    affine = sitk.AffineTransform(rigid.GetMatrix(), rigid.GetTranslation(), rigid.GetCenter())
    affine, metric = run(affine, [2, 1])
    return sitk.AffineTransform(affine), metric


def propagate_label(label: sitk.Image, mri: sitk.Image, ct: sitk.Image, ct_mask: sitk.Image,
                    min_coverage: float = 0.7) -> PropagationResult:
    """Move a lesion mask from MRI space onto the CT grid.

    Args:
        label: Lesion mask (integer labels) on the MRI's grid, or any grid
            overlaying the MRI in physical space.
        mri: The MRI the mask was drawn on.
        ct: The paired CT in HU; the output is on its grid.
        ct_mask: Brain mask of the CT.
        min_coverage: Least fraction of the CT brain that the moved MRI foreground
            must cover; below it the registration is reported as failed.

    Returns:
        A :class:`PropagationResult`.

    Raises:
        CaseError: The registration failed or slid the MRI off the CT, or a
            non-empty mask became empty.

    Example:
        >>> res = propagate_label(sitk.ReadImage("lesion.nii.gz"), dwi, ct, brain_mask(ct))  # doctest: +SKIP
        >>> sitk.WriteImage(res.label, "lesion_in_ct.nii.gz")  # doctest: +SKIP
    """
    transform, metric = register_mri_to_ct(mri, ct, ct_mask)
    label = sitk.Cast(label, sitk.sitkUInt8)
    moved = resample_like(label, ct, transform=transform, is_mask=True)
    fg = resample_like(_foreground(mri), ct, transform=transform, is_mask=True)
    brain = sitk.GetArrayViewFromImage(ct_mask) > 0
    coverage = float(np.mean(sitk.GetArrayViewFromImage(fg)[brain] > 0)) if brain.any() else 0.0
    if coverage < min_coverage:
        raise CaseError(f"MRI to CT registration failed or the MRI is too small: the moved MRI covers "
                        f"{100 * coverage:.0f}% of the CT brain (at least {100 * min_coverage:.0f}% expected)")
    if np.any(sitk.GetArrayViewFromImage(label)) and not np.any(sitk.GetArrayViewFromImage(moved)):
        raise CaseError("the lesion mask is empty after moving it to the CT (outside the CT's field of view?)")
    return PropagationResult(label=moved, transform=transform, metric=metric, coverage=coverage)
