"""Reading CT volumes (NIfTI, NRRD, MetaImage, DICOM series folders) and finding cases.

Everything is read into a :class:`SimpleITK.Image`, which carries the voxel grid's
physical geometry (origin, spacing, direction cosines in ITK's LPS frame). The
pipeline keeps that geometry all the way to the output files, so inputs in any
orientation come out overlaying their source in physical space.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.errors import UserError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# nnU-Net raw folders name channel files CASE_0000.nii.gz: read them as case CASE
_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")


class CaseError(Exception):
    """A case that cannot be processed (bad input, failed registration); the run goes on."""


def _strip_suffix(name: str) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def case_id(path: Path | str) -> str:
    """The case identifier of an image file or DICOM folder.

    Args:
        path: A file such as ``sub-01.nii.gz`` or ``sub-01_0000.nii.gz``, or a folder.

    Returns:
        The name without its image suffix and without an nnU-Net channel suffix.

    Example:
        >>> case_id("data/sub-01_0000.nii.gz")
        'sub-01'
    """
    path = Path(path)
    stem = path.name if path.is_dir() else (_strip_suffix(path.name) or path.stem)
    return _CHANNEL_SUFFIX.sub("", stem)


def find_cases(folder: Path | str, what: str = "input") -> dict[str, Path]:
    """Map case ids to the image files or DICOM folders directly inside ``folder``.

    Args:
        folder: Folder holding one image file (or one DICOM series folder) per case.
        what: Name of the folder in error messages.

    Returns:
        ``{case_id: path}``, sorted by case id.

    Raises:
        UserError: The folder is missing, empty, or two entries share a case id.

    Example:
        >>> cases = find_cases("raw_ct")  # doctest: +SKIP
        >>> list(cases)[:2]  # doctest: +SKIP
        ['sub-01', 'sub-02']
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist or is not a folder")
    cases: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and _strip_suffix(entry.name) is None:
            continue  # sidecars such as .json or .txt
        cid = case_id(entry)
        if cid in cases:
            raise UserError(f"{what} folder {folder}: {cases[cid].name} and {entry.name} "
                            f"both give case id {cid!r}; keep one file per case")
        cases[cid] = entry
    if not cases:
        raise UserError(f"{what} folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}) "
                        "and no DICOM series folder")
    return dict(sorted(cases.items()))


def read_dicom_series(folder: Path | str) -> sitk.Image:
    """Read the DICOM series with the most slices in ``folder`` (searched recursively).

    Raises:
        CaseError: No DICOM series found.
    """
    reader = sitk.ImageSeriesReader()
    best: list[str] = []
    for sub in [Path(folder), *sorted(p for p in Path(folder).rglob("*") if p.is_dir())]:
        for sid in reader.GetGDCMSeriesIDs(str(sub)) or []:
            files = reader.GetGDCMSeriesFileNames(str(sub), sid)
            if len(files) > len(best):
                best = list(files)
    if not best:
        raise CaseError(f"no DICOM series found in folder {folder}")
    reader.SetFileNames(best)
    return reader.Execute()


def read_image(path: Path | str, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """Read an image file or a DICOM series folder.

    Args:
        path: NIfTI/NRRD/MetaImage file, or folder with a DICOM series.
        pixel_type: SimpleITK pixel type to cast to (float32 for images,
            ``sitk.sitkUInt8`` or ``sitk.sitkInt16`` for masks).

    Returns:
        The image; DICOM CT is rescaled to HU by the reader.

    Raises:
        CaseError: The file cannot be read.

    Example:
        >>> ct = read_image("raw_ct/sub-01.nii.gz")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        image = read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as e:  # ITK's reader errors are RuntimeError with a long trace
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CaseError(f"cannot read {path.name}: {first}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(f"{path.name} has {image.GetNumberOfComponentsPerPixel()} components "
                        "per voxel; expected a scalar (greyscale) volume")
    return sitk.Cast(image, pixel_type)


def check_volume(image: sitk.Image, name: str = "image", min_slices: int = 8) -> None:
    """Reject what is not a 3D volume: 2D images and single-slice (or nearly) stacks.

    Raises:
        CaseError: With the reason.
    """
    if image.GetDimension() != 3:
        raise CaseError(f"{name} is {image.GetDimension()}D; a 3D volume is required")
    if min(image.GetSize()) < min_slices:
        raise CaseError(f"{name} has size {image.GetSize()}; at least {min_slices} voxels "
                        "along every axis are required (a 2D slice or a thin stack?)")


def check_ct_hu(image: sitk.Image, min_air_fraction: float = 0.005, max_air_hu: float = -500.0,
                min_bone_hu: float = 300.0) -> None:
    """Check that intensities look like a head CT in Hounsfield units.

    A head CT always shows air around the head (about -1000 HU) and bone (several
    hundred HU and more). An MRI, or a CT stored without its rescale intercept
    (air at 0), has no value below ``max_air_hu``.

    Args:
        image: The volume.
        min_air_fraction: Least fraction of voxels below ``max_air_hu``.
        max_air_hu: Values below this count as air.
        min_bone_hu: The brightest 0.1 % of voxels must reach this (skull).

    Raises:
        CaseError: With the reason.
    """
    arr = sitk.GetArrayViewFromImage(image)
    sample = arr.ravel()[:: max(1, arr.size // 2_000_000)]  # a strided sample is plenty
    air = float(np.mean(sample < max_air_hu))
    lo, hi = float(sample.min()), float(sample.max())
    if air < min_air_fraction:
        raise CaseError(
            f"intensities {lo:.0f}..{hi:.0f} do not look like CT in HU: only {100 * air:.2f}% of "
            f"voxels below {max_air_hu:.0f} HU (air); an MRI, a skull-stripped image or a CT "
            "without rescale intercept?")
    bone = float(np.percentile(sample, 99.9))
    if bone < min_bone_hu:
        raise CaseError(f"no bone: the brightest 0.1% of voxels are below {bone:.0f} HU "
                        f"(expected skull above {min_bone_hu:.0f} HU); not a head CT?")


def write_image(image: sitk.Image, path: Path | str, pixel_type: int | None = None) -> None:
    """Write ``image`` (optionally cast) with compression, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    sitk.WriteImage(image, str(path), useCompression=True)
