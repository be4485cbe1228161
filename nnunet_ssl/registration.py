"""Image registration shared by the dataset builders (SimpleITK's ``ImageRegistrationMethod``).

Two uses:

* :func:`register_rigid`: one head onto another image of the same head (NCCT onto its CTA in
  ``clot-dataset``): ``Euler3DTransform``, Mattes mutual information, a multi-resolution pyramid.
* :func:`register_atlas`: an atlas template (moving) onto a patient's CT (fixed) in
  ``prepare-aspects``: an affine transform, initialised from the two brain masks' centroids and
  extents, then a B-spline deformation on top of it (``BSplineTransformInitializer``), both by
  mutual information. Label maps follow with :func:`warp_labels` (nearest neighbour).

Every transform maps a physical point of the fixed image to the matching point of the moving
image (ITK's convention, as ``sitk.Resample`` needs it).

Example:
    >>> result = register_atlas(ct, template, ct_brain, template_brain, "case_01")  # doctest: +SKIP
    >>> zones_on_ct = warp_labels(zones, ct, result.transform)  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.errors import UserError


@dataclass(frozen=True)
class RegistrationSettings:
    """Settings of the rigid NCCT -> CTA registration.

    ``shrink_factors`` and ``smoothing_mm`` give the pyramid (coarse to fine); a shrink
    factor is reduced where the volume would fall below 8 voxels along an axis.
    """

    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    histogram_bins: int = 50
    sampling_fraction: float = 0.25
    iterations: int = 200
    learning_rate: float = 1.0
    seed: int = 1  # SimpleITK reads 0 as "seed from the clock": any other value gives repeatable samples
    # below this mutual information (nats-like units of Mattes' metric) the images share no structure;
    # matched heads of the phantom reach about 1.4, unrelated noise about 0.01
    min_mutual_information: float = 0.05


@dataclass(frozen=True)
class AtlasRegistrationSettings:
    """Settings of the atlas template -> CT registration (affine, then B-spline).

    Attributes:
        affine_shrink_factors, affine_smoothing_mm: Pyramid of the affine stage (coarse to fine).
        affine_iterations: Iterations per level of the affine stage.
        bspline_mesh_mm: Spacing (mm) of the B-spline control grid over the CT's field of view;
            larger is smoother. At least one mesh cell per axis.
        bspline_shrink_factors, bspline_smoothing_mm: Pyramid of the deformable stage.
        bspline_iterations: Iterations (L-BFGS-B) per level of the deformable stage; 0 skips it.
        window_hu: Both images are clipped to this range before registration, so that the skull does
            not outweigh the brain's structure in the metric.
        histogram_bins, sampling_fraction, seed: Mattes mutual information and its random sampling
            (``seed`` 0 would draw other samples every run).
        work_spacing_mm: Both images are registered on copies with this spacing (mm) along each axis
            that is finer, but never with fewer than ``work_min_voxels`` along an axis (``None``: on
            their own grids). The transform is physical, so it applies to the full grid. At 2 mm a
            0.5 mm head CT has 64 times fewer voxels, which makes registering many CTs affordable;
            the zones are far larger than that. Small phantoms keep their grid.
    """

    affine_shrink_factors: tuple[int, ...] = (4, 2, 1)
    affine_smoothing_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    affine_iterations: int = 200
    bspline_mesh_mm: float = 25.0
    bspline_shrink_factors: tuple[int, ...] = (4, 2)
    bspline_smoothing_mm: tuple[float, ...] = (2.0, 1.0)
    bspline_iterations: int = 30
    window_hu: tuple[float, float] = (-100.0, 200.0)
    histogram_bins: int = 32
    sampling_fraction: float = 0.1
    seed: int = 1  # SimpleITK reads 0 as "seed from the clock": any other value gives repeatable samples
    work_spacing_mm: Optional[float] = 2.0
    work_min_voxels: int = 64


@dataclass
class AtlasRegistration:
    """The result of :func:`register_atlas`."""

    transform: sitk.Transform  # CT point -> template point: the affine, then (inside) the B-spline
    affine: sitk.AffineTransform
    metric: float  # final Mattes mutual information of the last stage (lower is better)


def _last_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def _pyramid(method: sitk.ImageRegistrationMethod, size: Sequence[int], shrink: Sequence[int],
             smoothing_mm: Sequence[float]) -> None:
    smallest = min(size)
    method.SetShrinkFactorsPerLevel([max(1, min(f, smallest // 8)) for f in shrink])
    method.SetSmoothingSigmasPerLevel(list(smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()


def register_rigid(cta: sitk.Image, ncct: sitk.Image, case: str = "case",
                   settings: RegistrationSettings = RegistrationSettings()) -> tuple[sitk.Euler3DTransform, float]:
    """Rigidly register ``ncct`` (moving) to ``cta`` (fixed).

    Returns:
        ``(transform, metric)``: the transform maps a physical point of the CTA to the
        matching point of the NCCT (ITK's fixed-to-moving convention, as ``sitk.Resample``
        needs it), and the final mutual-information metric (lower is better).

    Raises:
        UserError: Naming the case when the registration fails: ITK stops (e.g. the images do not
            overlap, or one is blank) or the final mutual information is below
            ``settings.min_mutual_information`` (the images share no structure).

    Example:
        >>> transform, metric = register_rigid(cta, ncct, "case_01")  # doctest: +SKIP
        >>> sitk.Resample(ncct, cta, transform, sitk.sitkLinear, -1000.0)  # doctest: +SKIP
    """
    fixed, moving = sitk.Cast(cta, sitk.sitkFloat32), sitk.Cast(ncct, sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.sampling_fraction, settings.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=settings.learning_rate, minStep=1e-4,
                                                    numberOfIterations=settings.iterations,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    _pyramid(method, list(fixed.GetSize()) + list(moving.GetSize()), settings.shrink_factors, settings.smoothing_mm)
    method.SetInitialTransform(initial, inPlace=False)
    try:
        result = method.Execute(fixed, moving)
    except RuntimeError as e:
        raise UserError(f"case '{case}': registration of the NCCT to the CTA failed ({_last_line(e)}); check that "
                        "both images show the same head and overlap in physical space") from None
    metric = float(method.GetMetricValue())
    transform = sitk.Euler3DTransform(sitk.CompositeTransform(result).GetNthTransform(0)
                                      if isinstance(result, sitk.CompositeTransform) else result)
    if not np.all(np.isfinite(transform.GetParameters())) or not np.isfinite(metric):
        raise UserError(f"case '{case}': registration of the NCCT to the CTA failed (non-finite result)")
    if -metric < settings.min_mutual_information:
        raise UserError(f"case '{case}': registration of the NCCT to the CTA failed: the mutual information after "
                        f"registration is {-metric:.3f}, below {settings.min_mutual_information}; the two images "
                        "share no structure (another patient, an empty or corrupt image?)")
    return transform, metric


def mask_moments(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (mm, physical) and standard deviation along each physical axis of a mask's voxels.

    Raises:
        ValueError: The mask is empty.
    """
    index = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].astype(float)  # (x, y, z) indices
    if index.size == 0:
        raise ValueError("empty mask")
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    points = np.array(mask.GetOrigin()) + (index * np.array(mask.GetSpacing())) @ direction.T
    return points.mean(axis=0), points.std(axis=0)


def initial_affine(fixed_mask: sitk.Image, moving_mask: sitk.Image) -> sitk.AffineTransform:
    """The affine that maps the fixed mask's centroid and extents onto the moving mask's.

    A translation between the centroids and a scaling along each physical axis by the ratio of
    the masks' standard deviations: brains of different size start out overlapping, which the
    mutual-information optimiser alone does not reliably achieve.

    Example:
        >>> a = sitk.Image([20, 20, 20], sitk.sitkUInt8); a[5:15, 5:15, 5:15] = 1
        >>> b = sitk.Image([40, 40, 40], sitk.sitkUInt8); b[10:30, 10:30, 10:30] = 1
        >>> [round(v, 3) for v in initial_affine(a, b).TransformPoint((9.5, 9.5, 9.5))]
        [19.5, 19.5, 19.5]
    """
    c_fixed, s_fixed = mask_moments(fixed_mask)
    c_moving, s_moving = mask_moments(moving_mask)
    scale = np.where(s_fixed > 0, s_moving / np.maximum(s_fixed, 1e-6), 1.0)
    affine = sitk.AffineTransform(3)
    affine.SetCenter([float(c) for c in c_fixed])
    affine.SetMatrix([float(v) for v in np.diag(scale).ravel()])
    affine.SetTranslation([float(v) for v in c_moving - c_fixed])
    return affine


def work_spacing(image: sitk.Image, spacing_mm: Optional[float], min_voxels: int) -> list[float]:
    """The spacing an image is registered at (see :class:`AtlasRegistrationSettings`).

    Example:
        >>> img = sitk.Image([512, 512, 30], sitk.sitkFloat32); img.SetSpacing((0.45, 0.45, 5.0))
        >>> work_spacing(img, 2.0, 64)
        [2.0, 2.0, 5.0]
    """
    old = list(image.GetSpacing())
    if not spacing_mm:
        return old
    extent = [s * n for s, n in zip(old, image.GetSize())]
    return [max(s, min(float(spacing_mm), e / min_voxels)) for s, e in zip(old, extent)]


def _windowed(image: sitk.Image, settings: "AtlasRegistrationSettings") -> sitk.Image:
    image, window = sitk.Cast(image, sitk.sitkFloat32), settings.window_hu
    spacing = work_spacing(image, settings.work_spacing_mm, settings.work_min_voxels)
    if not np.allclose(spacing, image.GetSpacing()):
        from nnunet_ssl.ct.resample import resample_to_spacing

        image = resample_to_spacing(image, spacing, default_value=float(window[0]))
    return sitk.Clamp(image, sitk.sitkFloat32, float(window[0]), float(window[1]))


def _method(settings: AtlasRegistrationSettings) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.sampling_fraction, settings.seed)
    method.SetInterpolator(sitk.sitkLinear)
    return method


def register_atlas(ct: sitk.Image, template: sitk.Image, ct_brain: sitk.Image, template_brain: sitk.Image,
                   case: str = "case", settings: AtlasRegistrationSettings = AtlasRegistrationSettings()
                   ) -> AtlasRegistration:
    """Register an atlas ``template`` (moving) to a patient's ``ct`` (fixed): affine, then B-spline.

    Args:
        ct: The patient's CT in HU (fixed).
        template: The atlas template CT in HU (moving), any grid and field of view.
        ct_brain, template_brain: Brain masks on each image's grid; they initialise the affine
            (:func:`initial_affine`).
        case: Named in errors.
        settings: Pyramids, iterations, control-grid spacing.

    Returns:
        An :class:`AtlasRegistration` whose ``transform`` maps CT points to template points, so that
        ``sitk.Resample(zones, ct, transform, sitk.sitkNearestNeighbor)`` puts the atlas zones on the CT.

    Raises:
        UserError: Naming the case when a mask is empty or ITK stops (e.g. the images do not overlap).
    """
    fixed, moving = _windowed(ct, settings), _windowed(template, settings)
    try:
        initial = initial_affine(ct_brain, template_brain)
    except ValueError:
        raise UserError(f"case '{case}': atlas registration needs a brain mask of the CT and of the template, "
                        "and one of them is empty") from None
    sizes = list(fixed.GetSize()) + list(moving.GetSize())
    method = _method(settings)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                    numberOfIterations=settings.affine_iterations,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    _pyramid(method, sizes, settings.affine_shrink_factors, settings.affine_smoothing_mm)
    method.SetInitialTransform(initial, inPlace=False)
    try:
        result = method.Execute(fixed, moving)
        composite = sitk.CompositeTransform(result)
        affine = sitk.AffineTransform(composite.GetNthTransform(composite.GetNumberOfTransforms() - 1))
        metric = float(method.GetMetricValue())
        transform: sitk.Transform = sitk.CompositeTransform([affine])
        if settings.bspline_iterations > 0:
            physical = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
            mesh = [max(1, int(round(p / settings.bspline_mesh_mm))) for p in physical]
            bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
            method = _method(settings)
            method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5,
                                        numberOfIterations=settings.bspline_iterations, maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=1000,
                                        costFunctionConvergenceFactor=1e7)
            _pyramid(method, sizes, settings.bspline_shrink_factors, settings.bspline_smoothing_mm)
            method.SetMovingInitialTransform(affine)
            method.SetInitialTransform(bspline, inPlace=True)
            method.Execute(fixed, moving)
            metric = float(method.GetMetricValue())
            # fixed point -> B-spline -> affine -> template point (the last transform added is applied first)
            transform = sitk.CompositeTransform([affine, bspline])
    except RuntimeError as e:
        raise UserError(f"case '{case}': registration of the atlas to the CT failed ({_last_line(e)}); check that "
                        "the image is a head CT in HU") from None
    if not np.all(np.isfinite(affine.GetParameters())) or not np.isfinite(metric):
        raise UserError(f"case '{case}': registration of the atlas to the CT failed (non-finite result)")
    return AtlasRegistration(transform, affine, metric)


def warp_labels(labels: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """A label map of the moving image on ``reference``'s grid (nearest neighbour, 0 outside), as uint8."""
    return sitk.Resample(labels, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def warp_image(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
               default_value: float = -1000.0) -> sitk.Image:
    """An intensity image of the moving image on ``reference``'s grid (linear), as float32."""
    return sitk.Resample(image, reference, transform, sitk.sitkLinear, default_value, sitk.sitkFloat32)


def dice(a: sitk.Image, b: sitk.Image) -> float:
    """Dice overlap of two masks on the same grid (1.0 for two empty masks)."""
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    total = int(x.sum()) + int(y.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(x, y).sum()) / total


def mean_surface_distance(a: sitk.Image, b: sitk.Image) -> Optional[float]:
    """Symmetric mean distance (mm) between the surfaces of two masks on one grid; ``None`` if one is empty."""
    a, b = sitk.Cast(a > 0, sitk.sitkUInt8), sitk.Cast(b > 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(a).any() or not sitk.GetArrayViewFromImage(b).any():
        return None
    distances = []
    for one, other in ((a, b), (b, a)):
        # copies, not views: a view does not keep its temporary image alive
        field = np.abs(sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
            other, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)))
        contour = sitk.GetArrayFromImage(sitk.LabelContour(one)) > 0
        distances.append(field[contour])
    return float(np.concatenate(distances).mean())
