"""The per-case NCCT preprocessing pipeline.

One case goes through: checks (3D, plausible HU) -> reorienting to LPS axis
order and resampling (default 1 mm isotropic) -> brain mask -> contralateral image and mid-sagittal plane (when a
channel needs it) with plausibility checks -> difference image -> label (in CT
space, or propagated from a paired MRI) -> intensity clipping and skull
stripping. Everything stays in memory; :mod:`nnunet_ssl.ct.dataset` writes it.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.ct.brain_mask import brain_mask, mask_volume_ml
from nnunet_ssl.ct.io import CaseError, check_ct_hu, check_finite, check_same_grid, check_volume, read_image
from nnunet_ssl.ct.labels import propagate_label
from nnunet_ssl.ct.resample import resample_like, resample_to_spacing
from nnunet_ssl.ct.symmetry import SymmetryResult, contralateral_image, difference_image

# channel set -> nnU-Net channel names; "CT" selects nnU-Net's CT normalisation
# (dataset-wide clipping and z-scoring), "noNorm" keeps the HU difference as is
CHANNELS: dict[str, tuple[str, ...]] = {
    "ct": ("CT",),
    "ct+diff": ("CT", "noNorm"),
    "ct+contra": ("CT", "CT"),
}


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of the pipeline (the CLI options map onto these).

    Attributes:
        channels: ``"ct"``, ``"ct+diff"`` or ``"ct+contra"`` (see :data:`CHANNELS`).
        spacing: Output spacing in mm, ``(x, y, z)``.
        orientation: Axis order of the outputs (``"LPS"``: identity direction for an
            axis-aligned scan), or ``None`` to keep the input's. nnU-Net reads voxel
            arrays and ignores the direction matrix, so mixed RAS/LPS inputs would
            look mirrored to the network; reorienting only permutes and flips axes.
        brain_method: Brain mask method, see :func:`nnunet_ssl.ct.brain_mask.brain_mask`.
        clip: HU range the CT and contralateral image are clipped to.
        mirror_transform: ``"rigid"`` or ``"affine"`` mirror registration.
        skull_strip: Set everything outside the brain to ``background_hu``.
        background_hu: Value outside the brain in skull-stripped outputs.
        min_similarity: Least image/contralateral correlation of a successful mirror registration.
        max_plane_angle_deg: Largest plausible tilt of the mid-sagittal plane from the
            scanner's left-right axis.
        max_plane_distance_mm: Largest plausible distance of the brain centroid from the plane.
        max_plane_residual_deg: Largest rotation left in the mirror map after removing the
            reflection (only checked for rigid mirror registration).
        check_hu: Reject images whose intensities do not look like CT in HU.
        qc: Write a QC picture per case.
        max_label: Largest label value: labels are 0 (background), 1 (lesion) and 2..max_label;
            a case with any other value (255, -1, ...) fails, since nnU-Net needs consecutive labels.
    """

    channels: str = "ct"
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: str | None = "LPS"
    brain_method: str = "builtin"
    clip: tuple[float, float] = (-100.0, 400.0)
    mirror_transform: str = "rigid"
    skull_strip: bool = True
    background_hu: float = 0.0
    min_similarity: float = 0.5
    max_plane_angle_deg: float = 30.0
    max_plane_distance_mm: float = 20.0
    max_plane_residual_deg: float = 5.0
    check_hu: bool = True
    qc: bool = True
    max_label: int = 1

    def __post_init__(self) -> None:
        if self.channels not in CHANNELS:
            raise ValueError(f"channels must be one of {', '.join(CHANNELS)}, got {self.channels!r}")
        if self.clip[0] >= self.clip[1]:
            raise ValueError(f"clip range must be increasing, got {self.clip}")

    @property
    def channel_names(self) -> tuple[str, ...]:
        return CHANNELS[self.channels]

    @property
    def needs_mirror(self) -> bool:
        return self.channels != "ct"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class CaseResult:
    """Everything the pipeline made for one case (all on the resampled CT grid)."""

    channels: list[sitk.Image]
    brain: sitk.Image
    ct: sitk.Image
    label: sitk.Image | None = None
    contralateral: sitk.Image | None = None
    difference: sitk.Image | None = None
    symmetry: SymmetryResult | None = None
    info: dict = field(default_factory=dict)


@contextmanager
def _timed(info: dict, step: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        info[f"seconds_{step}"] = round(time.perf_counter() - start, 3)


def check_symmetry(res: SymmetryResult, config: PreprocessConfig) -> None:
    """Raise :class:`CaseError` when the mirror registration result is implausible."""
    if not np.isfinite(res.similarity) or res.similarity < config.min_similarity:
        raise CaseError(f"mirror registration failed: similarity {res.similarity:.3f} "
                        f"below {config.min_similarity:.3f}")
    if res.angle_deg > config.max_plane_angle_deg:
        raise CaseError(f"implausible mid-sagittal plane: tilted {res.angle_deg:.1f} degrees "
                        f"from the left-right axis (at most {config.max_plane_angle_deg:.1f})")
    if res.centroid_distance_mm > config.max_plane_distance_mm:
        raise CaseError(f"implausible mid-sagittal plane: {res.centroid_distance_mm:.1f} mm from the "
                        f"brain centroid (at most {config.max_plane_distance_mm:.1f})")
    if config.mirror_transform == "rigid" and res.residual_deg > config.max_plane_residual_deg:
        raise CaseError(f"mirror registration failed: not a reflection (residual rotation "
                        f"{res.residual_deg:.1f} degrees)")


def _as_image(x: sitk.Image | Path | str) -> sitk.Image:
    if isinstance(x, sitk.Image):
        check_finite(x)
        return x
    return read_image(x)


def _as_label(x: sitk.Image | Path | str, max_label: int) -> sitk.Image:
    # masks saved as float (0.0/1.0, sometimes 0.9999) must round, not truncate
    lab = sitk.Round(sitk.Cast(_as_image(x), sitk.sitkFloat32))
    values = np.unique(sitk.GetArrayViewFromImage(lab))
    odd = [f"{v:g}" for v in values if not 0 <= v <= max_label]
    if odd:
        allowed = "0 (background) and 1 (lesion)" if max_label == 1 else f"0 (background) to {max_label}"
        raise CaseError(f"label values {', '.join(odd)} found; labels must be {allowed} (nnU-Net needs "
                        "consecutive labels): fix the mask, or pass --max-label for more classes")
    return sitk.Cast(lab, sitk.sitkUInt8)


def _name(x: sitk.Image | Path | str, default: str) -> str:
    return default if isinstance(x, sitk.Image) else f"{default} {Path(x).name}"


def preprocess_case(ct: sitk.Image | Path | str, config: PreprocessConfig = PreprocessConfig(),
                    label: sitk.Image | Path | str | None = None,
                    mri: sitk.Image | Path | str | None = None) -> CaseResult:
    """Run the pipeline on one case.

    Args:
        ct: Head NCCT in HU (image, file or DICOM folder).
        config: Settings.
        label: Lesion mask. In the CT's physical space when ``mri`` is ``None``,
            otherwise drawn on ``mri``.
        mri: Paired MRI the label was drawn on (then the label is propagated).

    Returns:
        A :class:`CaseResult`; ``info`` holds the report's numbers.

    Raises:
        CaseError: The case cannot be processed; the message says why.

    Example:
        >>> cfg = PreprocessConfig(channels="ct+diff")
        >>> res = preprocess_case("raw/sub-01.nii.gz", cfg)  # doctest: +SKIP
        >>> res.info["plane_angle_deg"] < 10  # doctest: +SKIP
        True
    """
    info: dict = {}
    try:
        return _preprocess(ct, config, label, mri, info)
    except CaseError as e:
        e.info = info  # what was measured before the failure goes into the report
        raise


def _preprocess(ct: sitk.Image | Path | str, config: PreprocessConfig, label: sitk.Image | Path | str | None,
                mri: sitk.Image | Path | str | None, info: dict) -> CaseResult:
    lo, hi = config.clip
    with _timed(info, "read"):
        image = _as_image(ct)
        check_volume(image, "CT")
        source = image  # the grid a label in CT space must be on
        info["input_size"] = "x".join(str(s) for s in image.GetSize())
        info["input_spacing"] = "x".join(f"{s:.3g}" for s in image.GetSpacing())
        info["input_orientation"] = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
            image.GetDirection())
        if config.check_hu:
            check_ct_hu(image)
    with _timed(info, "resample"):
        if config.orientation:
            image = sitk.DICOMOrient(image, config.orientation)
        image = resample_to_spacing(image, config.spacing)
    with _timed(info, "brain_mask"):
        brain = brain_mask(image, method=config.brain_method)
        info["brain_volume_ml"] = round(mask_volume_ml(brain), 1)
        info["brain_method"] = config.brain_method
    out = CaseResult(channels=[], brain=brain, ct=image, info=info)

    if config.needs_mirror:
        with _timed(info, "contralateral"):
            sym = contralateral_image(image, brain, transform=config.mirror_transform, clip=config.clip)
            info.update(registration_similarity=round(sym.similarity, 4),
                        registration_metric=round(sym.metric, 3),
                        plane_angle_deg=round(sym.angle_deg, 3),
                        plane_distance_mm=round(sym.centroid_distance_mm, 3),
                        plane_residual_deg=round(sym.residual_deg, 3),
                        plane_normal=" ".join(f"{v:.5f}" for v in sym.normal),
                        plane_offset_mm=round(sym.offset, 3))
            check_symmetry(sym, config)
            out.symmetry = sym
            out.contralateral = sym.contralateral
            # only where both a voxel and its mirror point are brain: elsewhere the
            # difference would compare brain with skull along the rim
            both = sitk.And(brain, sym.contralateral_mask)
            out.difference = difference_image(image, sym.contralateral, both, config.clip)

    if label is not None:
        with _timed(info, "labels"):
            lab = _as_label(label, config.max_label)
            check_volume(lab, "label")
            if mri is not None:
                mri_img = _as_image(mri)
                check_volume(mri_img, "MRI")
                prop = propagate_label(lab, mri_img, image, brain)
                out.label = prop.label
                info.update(label_metric=round(prop.metric, 4), label_coverage=round(prop.coverage, 3))
            else:
                check_same_grid(source, lab, _name(label, "label"))
                out.label = resample_like(lab, image, is_mask=True)
            values = np.unique(sitk.GetArrayViewFromImage(out.label))
            info["label_values"] = [int(v) for v in values]

    def finish(img: sitk.Image) -> sitk.Image:
        img = sitk.Clamp(img, sitk.sitkFloat32, lo, hi)
        if config.skull_strip:
            img = sitk.Mask(img, brain, outsideValue=float(config.background_hu))
        return img

    out.channels.append(finish(image))
    if config.channels == "ct+diff":
        out.channels.append(out.difference)
    elif config.channels == "ct+contra":
        out.channels.append(finish(out.contralateral))
    return out
