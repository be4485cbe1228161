"""Colour-coded perfusion maps back to values, through the colour table of the package that drew them.

Perfusion packages often export a parametric map as a colour picture: every voxel
holds the RGB colour that the package's colour bar gives its value. The values can
be read back only with that colour bar, so the user gives it as a table (CSV with
columns ``value,r,g,b``; r, g, b in 0..255), for example read off the colour bar
of one exported picture, one row per colour step. Each voxel then gets the value
of the table colour nearest to its own (Euclidean distance in RGB). Voxels
farther than ``max_distance`` from every table colour (black background, grey
anatomy, overlay text) are not on the colour bar: they get ``fill`` (default the
table's lowest value) and are counted, so a wrong table shows as a high unmatched
fraction.

Example:
    >>> table = ColourTable.from_rows([(0.0, 0, 0, 255), (50.0, 0, 255, 0), (100.0, 255, 0, 0)])
    >>> values, unmatched = colours_to_values(np.array([[0, 250, 5], [128, 128, 128]]), table)
    >>> values.tolist(), unmatched.tolist()
    ([50.0, 0.0], [False, True])
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.errors import UserError

COLUMNS = ("value", "r", "g", "b")


@dataclass(frozen=True)
class ColourTable:
    """A colour bar: ``colours`` (n, 3) in 0..255 and the ``values`` they stand for (n,)."""

    values: np.ndarray
    colours: np.ndarray
    source: str = "table"

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[float]], source: str = "table") -> "ColourTable":
        """Rows ``(value, r, g, b)``; at least two, finite, r/g/b in 0..255, one value per colour."""
        array = np.asarray(rows, dtype=float)
        if array.ndim != 2 or array.shape[1] != 4 or len(array) < 2:
            raise UserError(f"colour table {source}: needs at least two rows of value,r,g,b")
        if not np.isfinite(array).all():
            raise UserError(f"colour table {source}: every entry must be a finite number")
        colours = array[:, 1:]
        if colours.min() < 0 or colours.max() > 255:
            raise UserError(f"colour table {source}: r, g and b must lie in 0..255")
        seen: dict[tuple, float] = {}
        for value, colour in zip(array[:, 0], map(tuple, colours)):
            if seen.setdefault(colour, value) != value:
                raise UserError(f"colour table {source}: colour {tuple(int(c) for c in colour)} stands for both "
                                f"{seen[colour]:g} and {value:g}")
        return cls(array[:, 0].copy(), colours.copy(), source)

    @classmethod
    def read(cls, path: Path | str) -> "ColourTable":
        """Read a CSV with the header ``value,r,g,b`` (other columns ignored)."""
        path = Path(path)
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise UserError(f"colour table {path}: needs the columns {','.join(COLUMNS)}; "
                                    f"missing {', '.join(missing)}")
                rows = []
                for line, row in enumerate(reader, start=2):
                    try:
                        rows.append([float(row[c]) for c in COLUMNS])
                    except (TypeError, ValueError):
                        raise UserError(f"colour table {path}, line {line}: "
                                        f"{[row[c] for c in COLUMNS]} are not all numbers") from None
        except OSError as e:
            raise UserError(f"cannot read colour table {path}: {e.strerror or e}") from None
        return cls.from_rows(rows, str(path))


def colours_to_values(rgb: np.ndarray, table: ColourTable, max_distance: float = 30.0,
                      fill: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Values of RGB voxels (``(..., 3)``) by the nearest table colour, and where none is near enough.

    Returns:
        ``(values, unmatched)``: float32 values of the shape ``rgb.shape[:-1]`` (``fill``, default
        the table's lowest value, where unmatched) and the boolean unmatched mask.
    """
    from scipy.spatial import cKDTree

    flat = np.asarray(rgb, dtype=float).reshape(-1, 3)
    distance, nearest = cKDTree(table.colours).query(flat)
    unmatched = distance > max_distance
    values = table.values[nearest].astype(np.float32)
    values[unmatched] = table.values.min() if fill is None else fill
    return values.reshape(rgb.shape[:-1]), unmatched.reshape(rgb.shape[:-1])


def read_colour_volume(path: Path, case: str, role: str, npy_spacing: Optional[Sequence[float]] = None) -> sitk.Image:
    """An RGB(A) volume as a SimpleITK vector image (alpha dropped): an image file with 3 or 4
    components per voxel, or a ``.npy`` array ``(z, y, x, 3 or 4)`` with ``npy_spacing``."""
    from nnunet_ssl.ct.io import CaseError, check_image_file
    from nnunet_ssl.raw_dataset import NPY_SUFFIX, load_npy

    if path.name.lower().endswith(NPY_SUFFIX):
        array = load_npy(path, case, role, npy_spacing)
        if array.ndim != 4 or array.shape[-1] not in (3, 4) or not np.issubdtype(array.dtype, np.number):
            raise UserError(f"case '{case}': {role} {path.name} has shape {array.shape}; a colour map needs "
                            "(z, y, x, 3) or (z, y, x, 4) numbers")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array[..., :3], dtype=np.float32), isVector=True)
        image.SetSpacing([float(s) for s in npy_spacing])
        return image
    try:
        check_image_file(path)
        image = sitk.ReadImage(str(path))
    except (CaseError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(f"case '{case}': cannot read {role} {path.name}: {reason}") from None
    components = image.GetNumberOfComponentsPerPixel()
    if components not in (3, 4) or image.GetDimension() != 3:
        raise UserError(f"case '{case}': {role} {path.name} is a {image.GetDimension()}D image with {components} "
                        "component(s) per voxel; a colour map given a colour table must be a 3D RGB(A) volume")
    if components == 4:
        image = sitk.Compose([sitk.VectorIndexSelectionCast(image, i) for i in range(3)])
    return image


def colour_volume_to_values(image: sitk.Image, table: ColourTable, max_distance: float = 30.0,
                            fill: Optional[float] = None) -> tuple[sitk.Image, float]:
    """A scalar float32 image of the values of an RGB volume, on its grid, and the unmatched fraction."""
    rgb = sitk.GetArrayFromImage(image)  # (z, y, x, 3)
    values, unmatched = colours_to_values(rgb, table, max_distance, fill)
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(image)
    return out, float(unmatched.mean())
