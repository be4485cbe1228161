"""Contralateral image and mid-sagittal plane by registering a head CT to its own mirror image.

Let ``S`` be the reflection about a plane through the brain's centroid, at first
perpendicular to the patient's left-right axis and then tilted to the best of a
coarse grid of candidate tilts. A rigid (or affine) transform
``R`` is optimised so that the mirrored image ``I(S(R(p)))`` matches ``I(p)``
inside the brain. The map ``M = S o R`` sends every point to its mirror point
about the patient's own mid-sagittal plane, so resampling ``I`` through ``M``
gives the contralateral image already in the patient's space: normal anatomy
cancels in ``I - I o M`` while one-sided lesions stand out. For a rigid ``R``,
``M`` is a reflection, ``p -> p - 2 (n.p - d) n``; its unit normal ``n`` and
offset ``d`` are the mid-sagittal plane ``n.p = d`` (physical LPS coordinates,
mm).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.ct.io import CaseError
from nnunet_ssl.ct.resample import resample_like, resample_to_spacing, run_registration, target_grid


@dataclass
class SymmetryResult:
    """Outcome of :func:`contralateral_image`.

    Attributes:
        contralateral: The image mirrored about the mid-sagittal plane, on the input grid.
        contralateral_mask: The brain mask mirrored the same way; where it is 0 the
            mirror point lies outside the brain (rim voxels near the skull).
        mirror: Affine map sending a physical point to its mirror point (``S o R``).
        normal: Unit normal of the mid-sagittal plane in LPS, pointing to the patient's left.
        offset: Plane offset ``d`` in mm; the plane is ``normal . p = d``.
        angle_deg: Angle between the plane normal and the left-right axis.
        residual_deg: Rotation left in ``mirror`` after removing the pure reflection
            (0 for an exact reflection; large values mean a poor solution).
        centroid_distance_mm: Distance of the brain centroid from the plane.
        similarity: Pearson correlation of image and contralateral image inside the
            (slightly grown) brain mask, after clipping; 1 is a perfect match.
        metric: Final value of the registration metric (mean squares).
    """

    contralateral: sitk.Image
    contralateral_mask: sitk.Image
    mirror: sitk.AffineTransform
    normal: np.ndarray
    offset: float
    angle_deg: float
    residual_deg: float
    centroid_distance_mm: float
    similarity: float
    metric: float


def _affine_parts(t: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """Matrix ``A`` and vector ``b`` of ``p -> A p + b`` for a matrix-offset transform."""
    a = np.array(t.GetMatrix(), float).reshape(3, 3)
    c = np.array(t.GetCenter(), float)
    return a, c + np.array(t.GetTranslation(), float) - a @ c


def _affine(a: np.ndarray, b: np.ndarray) -> sitk.AffineTransform:
    t = sitk.AffineTransform(3)
    t.SetMatrix([float(v) for v in a.ravel()])
    t.SetTranslation([float(v) for v in b])
    return t


def reflection(normal: Sequence[float], point: Sequence[float]) -> sitk.AffineTransform:
    """The reflection about the plane through ``point`` with normal ``normal`` (physical mm)."""
    n = np.asarray(normal, float)
    n = n / np.linalg.norm(n)
    a = np.eye(3) - 2.0 * np.outer(n, n)
    return _affine(a, 2.0 * float(n @ np.asarray(point, float)) * n)


def plane_from_mirror(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Mid-sagittal plane of a mirror map ``p -> A p + b``.

    Returns:
        ``(normal, offset, residual_deg)``: normal with a non-negative left-right
        component, offset ``d`` of the plane ``normal . p = d``, and the rotation
        angle left after removing the reflection (0 for a pure reflection).

    Example:
        >>> a = np.diag([-1.0, 1.0, 1.0]); b = np.array([4.0, 0.0, 0.0])
        >>> n, d, r = plane_from_mirror(a, b)
        >>> n.round(3).tolist(), round(d, 3), round(r, 3)
        ([1.0, 0.0, 0.0], 2.0, 0.0)
    """
    u, _, vt = np.linalg.svd(a)
    q = u @ vt  # orthogonal part: an affine mirror map may also scale and shear
    w, v = np.linalg.eigh((q + q.T) / 2.0)
    n = v[:, int(np.argmin(w))]
    if n[0] < 0:
        n = -n
    rest = q @ (np.eye(3) - 2.0 * np.outer(n, n))
    residual = np.degrees(np.arccos(np.clip((np.trace(rest) - 1.0) / 2.0, -1.0, 1.0)))
    return n, float(n @ b) / 2.0, float(residual)


def _centroid(mask: sitk.Image) -> np.ndarray:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask > 0)
    if not stats.HasLabel(1):
        raise CaseError("empty brain mask")
    return np.array(stats.GetCentroid(1), float)


def correlation(a: sitk.Image, b: sitk.Image, mask: sitk.Image) -> float:
    """Pearson correlation of two images inside ``mask`` (same grid)."""
    m = sitk.GetArrayViewFromImage(mask) > 0
    x = sitk.GetArrayViewFromImage(a)[m].astype(np.float64)
    y = sitk.GetArrayViewFromImage(b)[m].astype(np.float64)
    if x.size < 10 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


@dataclass(frozen=True)
class MirrorSettings:
    """Numerical settings of the mirror registration (the defaults suit head CT).

    Attributes:
        work_spacing_mm: The registration runs on a copy resampled to this spacing.
        shrink_factors: Multi-resolution levels on top of the work spacing.
        iterations: Maximum optimiser iterations per level.
        margin_mm: The metric mask is the brain mask grown by this much, so that the
            brain's outline against the inner table of the skull counts.
        sampling: Fraction of the mask's voxels sampled by the metric.
        seed: Seed of the metric's random sampling (results are reproducible).
        learning_rate: Largest first step of the optimiser, in mm of voxel motion.
        min_step: The optimiser stops when its step falls below this.
        relaxation: Step shrink factor when the gradient turns.
        search_yaw_deg: The start is the best of a grid of planes tilted up to this
            much about the scanner's z axis...
        search_roll_deg: ...and up to this much about its y axis...
        search_step_deg: ...in steps of this size...
        search_spacing_mm: ...compared at the nodes of a grid this coarse...
        search_window: ...within this HU window, inside the brain mask.
    """

    work_spacing_mm: float = 2.0
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    iterations: int = 200
    margin_mm: float = 4.0
    sampling: float = 0.2
    seed: int = 42
    learning_rate: float = 4.0
    min_step: float = 0.005
    relaxation: float = 0.8
    search_yaw_deg: float = 45.0
    search_roll_deg: float = 20.0
    search_step_deg: float = 5.0
    search_spacing_mm: float = 6.0
    search_window: tuple[float, float] = (-20.0, 100.0)


def _search_plane(image: sitk.Image, mask: sitk.Image, centre: np.ndarray, s: MirrorSettings) -> np.ndarray:
    """Normal of the best plane through ``centre`` on a coarse grid of yaw and roll angles.

    Gradient descent alone is caught in local optima once the head is turned by
    more than about 15 degrees; this brute-force start widens the capture range.
    The comparison uses the brain window only (bone edges would dominate it), and
    both sides are interpolated from the same smoothed finer image, so that no
    candidate wins merely because it maps the coarse grid onto itself.
    """
    lo, hi = s.search_window
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Clamp(image, sitk.sitkFloat32, lo, hi), s.search_spacing_mm / 2.0)
    grid = target_grid(smooth, [s.search_spacing_mm] * 3)
    inside = sitk.GetArrayFromImage(resample_like(mask, grid, is_mask=True)) > 0
    values = sitk.GetArrayFromImage(resample_like(smooth, grid, default_value=lo))[inside]
    best, best_cost = np.array([1.0, 0.0, 0.0]), np.inf
    yaws = np.arange(-s.search_yaw_deg, s.search_yaw_deg + 1e-6, s.search_step_deg)
    rolls = np.arange(-s.search_roll_deg, s.search_roll_deg + 1e-6, s.search_step_deg)
    for yaw in np.radians(yaws):
        for roll in np.radians(rolls):
            n = np.array([np.cos(yaw) * np.cos(roll), np.sin(yaw) * np.cos(roll), np.sin(roll)])
            mirrored = resample_like(smooth, grid, transform=reflection(n, centre), default_value=lo)
            cost = float(np.mean((sitk.GetArrayFromImage(mirrored)[inside] - values) ** 2))
            if cost < best_cost:
                best, best_cost = n, cost
    return best


def contralateral_image(image: sitk.Image, mask: sitk.Image, transform: str = "rigid",
                        clip: Sequence[float] = (-100.0, 400.0),
                        settings: MirrorSettings = MirrorSettings()) -> SymmetryResult:
    """Mirror ``image`` about the patient's mid-sagittal plane, in the patient's space.

    Args:
        image: Head CT in HU (any grid and orientation).
        mask: Brain mask on the grid of ``image`` (restricts the registration metric).
        transform: ``"rigid"`` (6 parameters; the mirror map is an exact
            reflection) or ``"affine"`` (rigid, then a 12-parameter refinement that also
            absorbs gross normal shape asymmetries).
        clip: HU range the image is clipped to for the registration, so that bone
            does not dominate the metric.
        settings: Numerical settings of the registration.

    Returns:
        A :class:`SymmetryResult`; nothing is judged here, see the pipeline's checks.

    Example:
        >>> mask = brain_mask(ct)  # doctest: +SKIP
        >>> res = contralateral_image(ct, mask)  # doctest: +SKIP
        >>> diff = difference_image(ct, res.contralateral, mask)  # doctest: +SKIP
        >>> print(f"plane tilted {res.angle_deg:.1f} degrees")  # doctest: +SKIP
    """
    if transform not in ("rigid", "affine"):
        raise ValueError(f"transform must be 'rigid' or 'affine', got {transform!r}")
    s = settings
    lo, hi = float(clip[0]), float(clip[1])
    centre = _centroid(mask)
    work_sp = [max(s.work_spacing_mm, sp) for sp in image.GetSpacing()]  # never finer than the input
    work = sitk.Clamp(resample_to_spacing(image, work_sp), sitk.sitkFloat32, lo, hi)
    work_mask = resample_like(mask, work, is_mask=True)
    grow = [max(1, int(round(s.margin_mm / sp))) for sp in work.GetSpacing()]
    work_mask = sitk.Cast(sitk.BinaryDilate(work_mask > 0, grow, sitk.sitkBall), sitk.sitkUInt8)

    flip = reflection(_search_plane(work, resample_like(mask, work, is_mask=True), centre, s), centre)
    # the mirrored copy is an explicit image: ITK's metric gradients assume a moving
    # transform chain without reflections
    flipped = resample_like(work, work, transform=flip, default_value=lo)

    def register(initial: sitk.Transform, levels: Sequence[int]) -> tuple[sitk.Transform, float]:
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMeanSquares()
        reg.SetMetricFixedMask(work_mask)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(s.sampling, s.seed)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=s.learning_rate, minStep=s.min_step, numberOfIterations=s.iterations,
            relaxationFactor=s.relaxation, gradientMagnitudeTolerance=1e-8)
        return run_registration(reg, work, flipped, initial, levels, "mirror registration")

    rigid = sitk.Euler3DTransform()
    rigid.SetCenter([float(c) for c in centre])
    found, metric = register(rigid, s.shrink_factors)
    if transform == "affine":
        euler = _as_matrix_offset(found)
        start = sitk.AffineTransform(euler.GetMatrix(), euler.GetTranslation(), euler.GetCenter())
        found, metric = register(start, s.shrink_factors[-1:])

    ra, rb = _affine_parts(_as_matrix_offset(found))
    sa, sb = _affine_parts(flip)
    mirror = _affine(sa @ ra, sa @ rb + sb)  # S(R(p)) = Sa (Ra p + Rb) + Sb
    normal, offset, residual = plane_from_mirror(sa @ ra, sa @ rb + sb)

    contra = resample_like(image, image, transform=mirror)
    sim = correlation(work, resample_like(work, work, transform=mirror, default_value=lo), work_mask)
    return SymmetryResult(
        contralateral=contra, contralateral_mask=resample_like(mask, mask, transform=mirror, is_mask=True),
        mirror=mirror, normal=normal, offset=offset,
        angle_deg=float(np.degrees(np.arccos(np.clip(abs(normal[0]), 0.0, 1.0)))),
        residual_deg=residual, centroid_distance_mm=float(abs(normal @ centre - offset)),
        similarity=sim, metric=metric)


def _as_matrix_offset(t: sitk.Transform) -> sitk.Transform:
    """The registration returns a composite of one transform; unwrap it to Euler or affine."""
    if t.GetName() == "CompositeTransform":
        t = sitk.CompositeTransform(t).GetNthTransform(0)
    return sitk.AffineTransform(t) if t.GetName() == "AffineTransform" else sitk.Euler3DTransform(t)


def difference_image(image: sitk.Image, contralateral: sitk.Image, mask: sitk.Image,
                     clip: Sequence[float] = (-100.0, 400.0)) -> sitk.Image:
    """``clip(image) - clip(contralateral)`` inside ``mask``, 0 outside (float32).

    A hypodense lesion gives negative values where it is and positive values at
    its mirror position.

    Example:
        >>> diff = difference_image(ct, res.contralateral, mask)  # doctest: +SKIP
    """
    lo, hi = float(clip[0]), float(clip[1])
    a = sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, lo, hi)
    b = sitk.Clamp(sitk.Cast(contralateral, sitk.sitkFloat32), sitk.sitkFloat32, lo, hi)
    return sitk.Mask(a - b, sitk.Cast(mask > 0, sitk.sitkUInt8), outsideValue=0.0)
