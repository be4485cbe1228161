"""Shared pieces of the commands that build a new multi-channel nnU-Net raw dataset from per-case files.

``clot-dataset`` (CTA + NCCT) and ``ctp-dataset`` (perfusion maps) both take, per
case, a few images with fixed roles and a label map, given either as a folder
with one sub-folder per role or as a CSV with one column per role. This module
finds the files, reads them (NIfTI/NRRD/MetaImage through
:func:`nnunet_ssl.ct.io.read_image`, ``.npy`` with a stated spacing), compares
voxel grids, checks the output folder and builds the dataset in a hidden
``.NAME.partial`` folder that is renamed into place when complete.

Example:
    >>> cases = read_case_table("inputs", roles=("cta", "ncct", "label"))  # doctest: +SKIP
    >>> cases["case_01"]["cta"]  # doctest: +SKIP
    PosixPath('inputs/cta/case_01.nii.gz')
"""
from __future__ import annotations

import contextlib
import csv
import re
import shutil
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.ct.io import IMAGE_SUFFIXES, CaseError, read_image
from nnunet_ssl.errors import UserError

NPY_SUFFIX = ".npy"
_DATASET_NAME = re.compile(r"Dataset(\d{3})_[A-Za-z0-9_-]+")


def folder_of(role: str) -> str:
    """Sub-folder of a role in the folder layout: ``label`` -> ``labels``, others as named."""
    return "labels" if role == "label" else role


def _case_of(name: str) -> Optional[str]:
    for suffix in IMAGE_SUFFIXES + (NPY_SUFFIX,):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _from_folder(root: Path, roles: Sequence[str], optional: Sequence[str]) -> dict[str, dict[str, Optional[Path]]]:
    present = [r for r in roles if (root / folder_of(r)).is_dir()]
    lacking = [folder_of(r) for r in roles if r not in present and r not in optional]
    if lacking:
        raise UserError(f"input folder {root} has no sub-folder(s) {lacking}; it needs one sub-folder per input "
                        f"({', '.join(folder_of(r) for r in roles)}), each holding CASE.nii.gz (or .nrrd, .npy ...)")
    files: dict[str, dict[str, Path]] = {}
    for role in present:
        for entry in sorted((root / folder_of(role)).iterdir()):
            case = _case_of(entry.name) if entry.is_file() and not entry.name.startswith(".") else None
            if case is None:
                continue
            if case in files.setdefault(role, {}):
                raise UserError(f"case '{case}': {folder_of(role)}/ holds both {files[role][case].name} and "
                                f"{entry.name}; keep one file per case")
            files[role][case] = entry
    present = [r for r in present if r not in optional or files.get(r)]  # an empty optional folder: absent
    cases = sorted(set().union(*(set(files.get(r, {})) for r in present)) if present else set())
    return {case: {r: files.get(r, {}).get(case, root / folder_of(r) / f"{case}.nii.gz") if r in present else None
                   for r in roles} for case in cases}


def _from_csv(path: Path, roles: Sequence[str], optional: Sequence[str]) -> dict[str, dict[str, Optional[Path]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    need = ["case"] + [r for r in roles if r not in optional]
    lacking = [c for c in need if c not in header]
    if lacking:
        raise UserError(f"CSV {path} has no column(s) {lacking}; its columns are {header} "
                        f"(needed: {', '.join(need)})")
    present = [r for r in roles if r in header]
    cases: dict[str, dict[str, Optional[Path]]] = {}
    for line, row in enumerate(rows, start=2):
        case = row["case"]
        if not case:
            raise UserError(f"CSV {path}, line {line}: empty case identifier")
        if case in cases:
            raise UserError(f"CSV {path}: case '{case}' appears twice (line {line} again)")
        entry: dict[str, Optional[Path]] = {}
        for role in roles:
            if role not in present:
                entry[role] = None
                continue
            if not row.get(role):
                raise UserError(f"case '{case}' (CSV {path}, line {line}): no path in column '{role}'")
            p = Path(row[role])
            entry[role] = p if p.is_absolute() else path.parent / p  # relative to the CSV's folder
        cases[case] = entry
    return cases


def read_case_table(source: Path | str, roles: Sequence[str],
                    optional: Sequence[str] = ()) -> dict[str, dict[str, Optional[Path]]]:
    """Find every case's files, and refuse a missing one naming the case and the role.

    Args:
        source: A folder with one sub-folder per role (``label`` -> ``labels/``) holding
            ``CASE.nii.gz`` (any of the reader's endings, or ``.npy``), or a CSV with a
            ``case`` column and one path column per role (paths relative to the CSV's folder).
        roles: The inputs of a case, in order, e.g. ``("cta", "ncct", "label")``.
        optional: Roles that may be absent altogether (no sub-folder, no column). A role that
            is present must be given for every case.

    Returns:
        ``{case: {role: path or None}}``, sorted by case; ``None`` only for an absent optional role.

    Raises:
        UserError: No such source, no case, a missing sub-folder or column, or a missing file.

    Example:
        >>> read_case_table("cases.csv", ("cta", "ncct", "label"))  # doctest: +SKIP
    """
    source = Path(source)
    if source.is_dir():
        cases = _from_folder(source, roles, optional)
    elif source.is_file():
        cases = _from_csv(source, roles, optional)
    else:
        raise UserError(f"input {source} does not exist; give a folder (one sub-folder per input) or a CSV")
    if not cases:
        raise UserError(f"input {source} lists no case")
    for case, files in cases.items():
        for role, path in files.items():
            if path is not None and not path.is_file():
                raise UserError(f"case '{case}': the {role} file {path} does not exist")
    return dict(sorted(cases.items()))


def load_npy(path: Path, case: str, role: str, npy_spacing: Optional[Sequence[float]]) -> np.ndarray:
    """The array of a ``.npy`` input; refused, naming the case and role, without ``npy_spacing`` or when unreadable."""
    if npy_spacing is None:
        raise UserError(f"case '{case}': {role} {path.name} is a .npy array, which holds no voxel spacing; "
                        "give it with --npy-spacing SX SY SZ (mm)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"case '{case}': cannot read {role} {path.name}: {e}") from None


def load_volume(path: Path, case: str, role: str, npy_spacing: Optional[Sequence[float]] = None,
                pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """Read one input: an image file through the project's reader, or a ``.npy`` array.

    A ``.npy`` array is in numpy order ``(z, y, x)`` (as ``SimpleITK.GetArrayFromImage`` gives)
    and gets the spacing ``npy_spacing`` (``(sx, sy, sz)`` in mm), origin 0 and identity direction.

    Raises:
        UserError: Naming the case and role when the file cannot be read, or a ``.npy`` is given
            without ``npy_spacing`` or is not a finite 3D array.
    """
    if path.name.lower().endswith(NPY_SUFFIX):
        array = load_npy(path, case, role, npy_spacing)
        if array.ndim != 3 or not np.issubdtype(array.dtype, np.number):
            raise UserError(f"case '{case}': {role} {path.name} has shape {array.shape} ({array.dtype}); "
                            "a 3D numeric array (z, y, x) is required")
        if not np.isfinite(array).all():
            raise UserError(f"case '{case}': {role} {path.name} holds NaN or infinite values")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing([float(s) for s in npy_spacing])
        return sitk.Cast(image, pixel_type)
    try:
        return read_image(path, pixel_type)
    except CaseError as e:
        raise UserError(f"case '{case}': {role}: {e}") from None


def grid_difference(reference: sitk.Image, image: sitk.Image) -> Optional[str]:
    """What differs between two voxel grids (size, spacing, origin, direction), or ``None`` if they match.

    Tolerances as in :func:`nnunet_ssl.ct.io.check_same_grid`.

    Example:
        >>> a = sitk.Image([4, 4, 4], sitk.sitkFloat32); b = sitk.Image([4, 4, 5], sitk.sitkFloat32)
        >>> grid_difference(a, b)
        'size (4, 4, 5) instead of (4, 4, 4)'
    """
    if image.GetSize() != reference.GetSize():
        return f"size {image.GetSize()} instead of {reference.GetSize()}"
    if not np.allclose(image.GetSpacing(), reference.GetSpacing(), rtol=1e-3, atol=1e-4):
        return f"spacing {tuple(round(s, 4) for s in image.GetSpacing())} instead of " \
               f"{tuple(round(s, 4) for s in reference.GetSpacing())}"
    if not np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=0.5 * min(reference.GetSpacing())):
        return f"origin {tuple(round(s, 3) for s in image.GetOrigin())} instead of " \
               f"{tuple(round(s, 3) for s in reference.GetOrigin())}"
    if not np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-3):
        return f"direction {tuple(round(s, 3) for s in image.GetDirection())} instead of " \
               f"{tuple(round(s, 3) for s in reference.GetDirection())}"
    return None


def label_image(label: sitk.Image, allowed: Sequence[int], case: str, path: Path) -> sitk.Image:
    """The label as uint8, refusing values outside ``allowed`` (naming the case and the values)."""
    values = np.unique(sitk.GetArrayViewFromImage(label))
    bad = [float(v) for v in values if v not in allowed]
    if bad:
        raise UserError(f"case '{case}': label {path.name} holds value(s) {bad[:5]}; allowed are {list(allowed)}")
    return sitk.Cast(label, sitk.sitkUInt8)


def check_output(output: Path, inputs: Sequence[Path], overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse an output that overlaps an input, is a file, or exists without ``overwrite`` (the command's ``flag``).

    Also refuses a ``DatasetXXX_Name`` whose id another dataset uses (nnU-Net finds datasets by id).
    """
    from nnunet_ssl.ct.folders import check_dataset_id, writable_folder

    resolved = Path(output).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if resolved == source or resolved in source.parents or source in resolved.parents:
            raise UserError(f"the output {output} and the input {source} overlap; write the new dataset "
                            "elsewhere (the inputs are never modified)")
    if output.exists() and not output.is_dir():
        raise UserError(f"{output} is a file, not a dataset folder; move it away or choose another output")
    if output.exists() and not overwrite:
        raise UserError(f"{output} exists; pass {flag} to replace it, or choose another output")
    writable_folder(output.parent, "output's parent folder")
    match = _DATASET_NAME.fullmatch(output.name)
    if match:
        check_dataset_id(output.parent, int(match.group(1)), output.name)
    else:
        print(f"Note: {output.name} is not named DatasetXXX_Name; nnU-Net finds raw datasets by that name")


@contextlib.contextmanager
def partial_folder(output: Path) -> Iterator[Path]:
    """Yield a hidden ``.NAME.partial`` folder beside ``output``; on success it replaces ``output``.

    An error leaves ``output`` as it was (an old output is removed only once the new one is complete).
    """
    work = output.parent / f".{output.name}.partial"
    if work.exists():
        shutil.rmtree(work)  # left by an interrupted run
    work.mkdir(parents=True)
    try:
        yield work
        if output.exists():
            shutil.rmtree(output)
        work.rename(output)
    finally:
        if work.exists():
            shutil.rmtree(work)
