"""Reading CT volumes (NIfTI, NRRD, MetaImage, DICOM series folders) and finding cases.

Everything is read into a :class:`SimpleITK.Image`, which carries the voxel grid's
physical geometry (origin, spacing, direction cosines in ITK's LPS frame). The
pipeline keeps that geometry all the way to the output files, so inputs in any
orientation come out overlaying their source in physical space.
"""
from __future__ import annotations

import gzip
import re
import zlib
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


def case_id(path: Path | str, channel_suffix: bool = True) -> str:
    """The case identifier of an image file or DICOM folder.

    Args:
        path: A file such as ``sub-01.nii.gz`` or ``sub-01_0000.nii.gz``, or a folder.
        channel_suffix: Drop a trailing nnU-Net channel suffix (``_0000``). Whether a
            folder is laid out that way is decided by :func:`find_cases`.

    Returns:
        The name without its image suffix (and channel suffix).

    Example:
        >>> case_id("data/sub-01_0000.nii.gz")
        'sub-01'
        >>> case_id("data/patient_0001.nii.gz", channel_suffix=False)
        'patient_0001'
    """
    path = Path(path)
    stem = path.name if path.is_dir() else (_strip_suffix(path.name) or path.stem)
    return _CHANNEL_SUFFIX.sub("", stem) if channel_suffix else stem


def _channel_layout(stems: list[str]) -> bool:
    """True when ``stems`` are nnU-Net channel files: every one ends in ``_NNNN`` and every
    case has the same channels ``0000..000k`` (one case with many "channels" is a series
    of plain names such as ``patient_0001 .. patient_0040``)."""
    channels: dict[str, set[int]] = {}
    for stem in stems:
        if not _CHANNEL_SUFFIX.search(stem):
            return False
        channels.setdefault(stem[:-5], set()).add(int(stem[-4:]))
    sets = list(channels.values())
    full = set(range(len(sets[0]))) if sets else set()
    return bool(sets) and all(c == full for c in sets) and (len(full) == 1 or len(sets) > 1)


def find_cases(folder: Path | str, what: str = "input") -> dict[str, Path]:
    """Map case ids to the image files or DICOM folders directly inside ``folder``.

    A trailing ``_NNNN`` is read as nnU-Net's channel suffix only where the whole folder
    is laid out that way (see :func:`_channel_layout`); otherwise it is part of the name.

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
    entries = [e for e in sorted(folder.iterdir()) if not e.name.startswith(".")
               and not (e.is_file() and _strip_suffix(e.name) is None)]  # sidecars such as .json or .txt
    channels = _channel_layout([case_id(e, channel_suffix=False) for e in entries])
    cases: dict[str, Path] = {}
    for entry in entries:
        cid = case_id(entry, channel_suffix=channels)
        if cid in cases:
            raise UserError(f"{what} folder {folder}: {cases[cid].name} and {entry.name} "
                            f"both give case id '{cid}'; keep one file per case")
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


def _non_finite(name: str, count: int) -> CaseError:
    return CaseError(f"{name} holds {count} NaN or infinite voxels; replace them (e.g. by the background "
                     "value) before preprocessing")


def _nifti_layout(path: Path) -> tuple[int, int, np.dtype] | None:
    """``(data offset, data bytes, voxel dtype)`` from a NIfTI header, or ``None`` if nibabel cannot parse it."""
    try:
        import nibabel

        header = nibabel.load(str(path)).header  # reads the header only
        dtype = np.dtype(header.get_data_dtype())
        return int(header.get_data_offset()), int(np.prod(header.get_data_shape(), dtype=np.int64)) * dtype.itemsize, dtype
    except Exception:  # noqa: BLE001 - a header nibabel cannot parse is left to ITK to judge
        return None


def _scan(path: Path, layout: tuple[int, int, np.dtype] | None) -> tuple[int, int]:
    """Read ``path`` (decompressing ``.gz``) to its end: ``(bytes, non-finite float voxels)``.

    Raises:
        CaseError: The compressed stream is cut short or damaged.
    """
    offset, nbytes, dtype = layout or (0, 0, np.dtype(np.uint8))
    floats = dtype.kind == "f"
    total, bad, rest = 0, 0, b""
    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as f:
            while chunk := f.read(1 << 24):
                start, total = total, total + len(chunk)
                lo, hi = max(offset - start, 0), min(offset + nbytes - start, len(chunk))
                if floats and hi > lo:
                    data = rest + chunk[lo:hi]
                    n = len(data) - len(data) % dtype.itemsize
                    bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:n], dtype))))
                    rest = data[n:]
    except EOFError:
        raise CaseError(f"cannot read {path.name}: truncated file (the compressed data ends early)") from None
    except (OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a bad CRC too
        raise CaseError(f"cannot read {path.name}: corrupt compressed data ({e})") from None
    return total, bad


def check_image_file(path: Path | str) -> None:
    """Raise :class:`CaseError` for a truncated or corrupt NIfTI file, or one with NaN voxels.

    ITK reads a NIfTI file whose voxel data is cut short without complaint (the missing
    voxels become 0), and turns NaN voxels into 0. So the file is read to its end (for
    ``.gz`` this checks the stream's length and CRC), the voxel bytes are compared with
    what the header declares, and float voxels are checked to be finite. NRRD and
    MetaImage readers detect short data themselves.

    Example:
        >>> check_image_file("raw_ct/sub-01.nii.gz")  # doctest: +SKIP
    """
    path = Path(path)
    name = path.name.lower()
    if not path.is_file() or not name.endswith((".gz", ".nii")):
        return
    layout = _nifti_layout(path) if name.endswith((".nii", ".nii.gz")) else None
    size, bad = _scan(path, layout)
    if layout is not None and size < layout[0] + layout[1]:
        raise CaseError(f"cannot read {path.name}: truncated file ({size} of the {layout[0] + layout[1]} "
                        "bytes its header declares; copy it again)")
    if bad:
        raise _non_finite(path.name, bad)


def check_finite(image: sitk.Image, name: str = "image") -> None:
    """Raise :class:`CaseError` when a floating-point image holds NaN or infinite voxels."""
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return  # integer voxels are always finite
    bad = int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(image))))
    if bad:
        raise _non_finite(name, bad)


def read_image(path: Path | str, pixel_type: int | None = sitk.sitkFloat32) -> sitk.Image:
    """Read an image file or a DICOM series folder: the one way images are read in nnunet-ssl.

    Args:
        path: NIfTI/NRRD/MetaImage file, or folder with a DICOM series.
        pixel_type: SimpleITK pixel type to cast to (float32 for images,
            ``sitk.sitkUInt8`` or ``sitk.sitkInt16`` for masks), or ``None`` to keep the file's.

    Returns:
        The image; DICOM CT is rescaled to HU by the reader.

    Raises:
        CaseError: The file cannot be read, is empty, truncated or corrupt, is not scalar,
            has more than 3 dimensions, or holds NaN or infinite voxels.

    Example:
        >>> ct = read_image("raw_ct/sub-01.nii.gz")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise CaseError(f"cannot read {path.name}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise CaseError(f"cannot read {path.name}: empty file (0 bytes)")
    check_image_file(path)
    try:
        image = read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as e:  # ITK's reader errors are RuntimeError with a long trace
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CaseError(f"cannot read {path.name}: {first}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(f"{path.name} has {image.GetNumberOfComponentsPerPixel()} components "
                        "per voxel; expected a scalar (greyscale) volume")
    if image.GetDimension() not in (2, 3):  # SimpleITK filters (even a cast) stop at 3D
        raise CaseError(f"{path.name} is {image.GetDimension()}D; a 3D volume is required")
    check_finite(image, path.name)
    return image if pixel_type is None else sitk.Cast(image, pixel_type)


def check_same_grid(reference: sitk.Image, image: sitk.Image, what: str) -> None:
    """Raise :class:`CaseError` unless ``image`` lies on ``reference``'s voxel grid.

    Masks and labels given with an image must be drawn on its grid: one given on
    another grid (shifted origin, missing slices) is a mismatch, not something to resample.

    Args:
        reference: The image.
        image: The mask or label.
        what: How the message names it, e.g. ``"mask sub-01.nii.gz"``.
    """
    if image.GetSize() != reference.GetSize():
        raise CaseError(f"{what} has size {image.GetSize()} but the image has {reference.GetSize()}; "
                        "masks and labels must be on the image's voxel grid")
    spacing_ok = np.allclose(image.GetSpacing(), reference.GetSpacing(), rtol=1e-3, atol=1e-4)
    origin_ok = np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=0.5 * min(reference.GetSpacing()))
    direction_ok = np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-3)
    if not (spacing_ok and origin_ok and direction_ok):
        raise CaseError(f"{what} has the image's size but another spacing, origin or direction; "
                        "put it on the image's voxel grid")


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
