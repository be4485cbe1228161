"""CTA + NCCT clot segmentation: register each NCCT to its CTA and write a two-channel nnU-Net raw dataset.

Per case a CTA, the NCCT of the same patient and the clot label drawn on the
CTA. The NCCT is registered rigidly to the CTA
(:func:`nnunet_ssl.registration.register_rigid`: ``Euler3DTransform``, Mattes
mutual information, a multi-resolution pyramid) and resampled onto the CTA's
voxel grid, so that channel 0 (CTA) and channel 1 (NCCT) of every case share one grid with the
label. A box in physical coordinates (mm, ITK's LPS frame) can crop every case
to the region around the circle of Willis. A QC picture per case shows the
registration: the CTA with the registered NCCT's edges, and a checkerboard of
the two.

Example:
    >>> write_clot_dataset("clot_inputs", "nnUNet_raw/Dataset620_Clot",
    ...                    box_mm=(-40, -60, -30, 40, 20, 10))  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.errors import UserError
from nnunet_ssl.registration import RegistrationSettings, register_rigid  # noqa: F401 (part of this API)

ROLES = ("cta", "ncct", "label")
CHANNELS = {0: "CT", 1: "CT"}  # nnU-Net's CT normalisation for both (HU with dataset-wide statistics)
CHANNEL_ROLES = {0: "CTA", 1: "NCCT (registered to the CTA)"}
LABELS = {"background": 0, "clot": 1}
HU_AIR = -1000.0
QC_FOLDER = "qc"


@dataclass
class ClotSummary:
    output: Path
    cases: list[str]
    transforms: dict[str, sitk.Transform] = field(default_factory=dict)  # case -> CTA point -> NCCT point
    metrics: dict[str, float] = field(default_factory=dict)              # case -> final metric value
    boxes: dict[str, tuple[float, ...]] = field(default_factory=dict)    # case -> template box on the case (mm)


def crop_box(image: sitk.Image, box_mm: Sequence[float], case: str = "case") -> tuple[int, ...]:
    """Voxel index range ``(i0, j0, k0, i1, j1, k1)`` (end exclusive) of the box ``(x0, y0, z0, x1, y1, z1)`` mm.

    The box is in physical coordinates (ITK's LPS frame, as the image's origin); the range
    covers every voxel centre inside it, clipped to the image.

    Raises:
        UserError: Naming the case when the box holds no voxel of the image.

    Example:
        >>> img = sitk.Image([10, 10, 10], sitk.sitkFloat32)
        >>> crop_box(img, (2, 2, 2, 5.5, 9, 20))
        (2, 2, 2, 6, 10, 10)
    """
    lo, hi = np.minimum(box_mm[:3], box_mm[3:]), np.maximum(box_mm[:3], box_mm[3:])
    corners = [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    index = np.array([image.TransformPhysicalPointToContinuousIndex([float(c) for c in p]) for p in corners])
    start = np.maximum(np.ceil(index.min(axis=0) - 1e-6), 0).astype(int)
    stop = np.minimum(np.floor(index.max(axis=0) + 1e-6) + 1, image.GetSize()).astype(int)
    if np.any(stop <= start):
        raise UserError(f"case '{case}': the box {tuple(box_mm)} mm holds no voxel of the CTA (its voxel centres "
                        f"span {image.GetOrigin()} .. "
                        f"{image.TransformIndexToPhysicalPoint([s - 1 for s in image.GetSize()])} mm)")
    return tuple(int(v) for v in start) + tuple(int(v) for v in stop)


def template_box_on_case(box_mm: Sequence[float], case_to_template: sitk.Transform) -> tuple[float, ...]:
    """The box ``(x0, y0, z0, x1, y1, z1)`` given in a template's physical space, on a case: the
    axis-aligned bounds of its eight corners mapped by the inverse of ``case_to_template``.

    Example:
        >>> shift = sitk.TranslationTransform(3, (10.0, 0.0, -5.0))  # case point -> template point
        >>> template_box_on_case((0, 0, 0, 20, 30, 40), shift)
        (-10.0, 0.0, 5.0, 10.0, 30.0, 45.0)
    """
    inverse = case_to_template.GetInverse()
    lo, hi = np.minimum(box_mm[:3], box_mm[3:]), np.maximum(box_mm[:3], box_mm[3:])
    corners = np.array([inverse.TransformPoint((float(x), float(y), float(z)))
                        for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return tuple(float(v) for v in corners.min(axis=0)) + tuple(float(v) for v in corners.max(axis=0))


def _crop(image: sitk.Image, r: Sequence[int]) -> sitk.Image:
    return image[r[0]:r[3], r[1]:r[4], r[2]:r[5]]  # SimpleITK slicing keeps the physical geometry


def save_registration_qc(path: Path, cta: sitk.Image, ncct: sitk.Image, label: sitk.Image, title: str,
                         window: tuple[float, float] = (-100.0, 300.0)) -> None:
    """One axial slice (the clot's middle slice, else the middle slice): CTA with the registered
    NCCT's edges, and a checkerboard of CTA and NCCT. Radiological view, as :mod:`nnunet_ssl.ct.qc`."""
    from matplotlib.figure import Figure

    views = [sitk.GetArrayFromImage(sitk.DICOMOrient(i, "LPS")) for i in (cta, ncct, label)]
    cta_a, ncct_a, label_a = views
    zs = np.nonzero(label_a.any(axis=(1, 2)))[0]
    k = int(zs[len(zs) // 2]) if zs.size else cta_a.shape[0] // 2
    edges = sitk.GetArrayFromImage(sitk.CannyEdgeDetection(
        sitk.GetImageFromArray(np.clip(ncct_a[k], *window).astype(np.float32)), 20.0, 60.0, [1.0, 1.0]))
    tile = max(4, min(cta_a.shape[1:]) // 8)
    jj, ii = np.mgrid[0:cta_a.shape[1], 0:cta_a.shape[2]]
    board = np.where(((jj // tile) + (ii // tile)) % 2 == 0, cta_a[k], ncct_a[k])

    fig = Figure(figsize=(6.4, 3.6), dpi=80)
    axes = fig.subplots(1, 2)
    axes[0].imshow(cta_a[k], cmap="gray", vmin=window[0], vmax=window[1])
    axes[0].imshow(np.ma.masked_where(edges == 0, edges), cmap="autumn", vmin=0, vmax=1, interpolation="none")
    axes[0].set_title("CTA, registered NCCT edges", fontsize=8)
    axes[1].imshow(board, cmap="gray", vmin=window[0], vmax=window[1])
    axes[1].set_title("checkerboard CTA / NCCT", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
        if label_a[k].any():
            ax.contour(label_a[k].astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    fig.suptitle(f"{title} (slice {k})", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))


def write_clot_dataset(source: Path | str, output_folder: Path | str, box_mm: Optional[Sequence[float]] = None,
                       npy_spacing: Optional[Sequence[float]] = None, overwrite: bool = False,
                       settings: RegistrationSettings = RegistrationSettings(), progress: bool = True,
                       dataset_name: Optional[str] = None, template: Optional[Path | str] = None) -> ClotSummary:
    """Register every case's NCCT to its CTA and write a two-channel nnU-Net raw dataset.

    Args:
        source: Folder with ``cta/``, ``ncct/`` and ``labels/`` sub-folders (``CASE.nii.gz``,
            ``.nrrd``, ``.npy`` ...), or a CSV with columns ``case,cta,ncct,label``.
        output_folder: The new dataset, e.g. ``$nnUNet_raw/Dataset620_Clot``.
        box_mm: Optional crop ``(x0, y0, z0, x1, y1, z1)`` in mm (physical, LPS) applied on the CTA grid;
            with ``template``, in the template's physical space.
        template: A CT (e.g. one case, or a template head) in whose space ``box_mm`` is given. It is
            registered rigidly to every CTA (as the NCCT is) and the box's corners are mapped onto the
            case; the crop is their axis-aligned bounding box on the CTA grid.
        npy_spacing: ``(sx, sy, sz)`` mm for ``.npy`` inputs (arrays in ``(z, y, x)`` order).
        overwrite: Replace an existing output.
        settings: Registration settings.
        progress: Show a progress bar.
        dataset_name: ``name`` in ``dataset.json`` (default: the output folder's name).

    Returns:
        A :class:`ClotSummary` with each case's transform (CTA point -> NCCT point).

    Raises:
        UserError: Naming the case for a missing or unreadable file, a label not on the CTA's grid
            or with values other than 0/1, a failed registration or an empty crop.

    Example:
        >>> write_clot_dataset("cases.csv", "nnUNet_raw/Dataset620_Clot")  # doctest: +SKIP
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from tqdm import tqdm

    from nnunet_ssl.ct.io import write_image
    from nnunet_ssl.raw_dataset import (check_output, grid_difference, label_image, load_volume, partial_folder,
                                        read_case_table)

    source = Path(source).resolve()
    output = Path(output_folder).resolve()
    if box_mm is not None and len(box_mm) != 6:
        raise UserError(f"the box needs 6 numbers x0 y0 z0 x1 y1 z1 (mm), got {list(box_mm)}")
    if template is not None and box_mm is None:
        raise UserError("a template places a box: give the box in the template's coordinates with --box-mm")
    cases = read_case_table(source, ROLES)
    inputs = [source] + [p.resolve() for f in cases.values() for p in f.values() if p]
    if template is not None:
        template = Path(template).resolve()
        inputs.append(template)
    check_output(output, inputs, overwrite)
    template_image = load_volume(template, "template", "template CT", npy_spacing) if template is not None else None
    summary = ClotSummary(output, list(cases))
    with partial_folder(output) as work:
        for case, files in tqdm(cases.items(), desc="clot-dataset", unit="case", disable=not progress):
            cta = load_volume(files["cta"], case, "CTA", npy_spacing)
            ncct = load_volume(files["ncct"], case, "NCCT", npy_spacing)
            label = load_volume(files["label"], case, "label", npy_spacing)
            difference = grid_difference(cta, label)
            if difference:
                raise UserError(f"case '{case}': the label {files['label'].name} is not on the CTA's voxel grid "
                                f"({difference}); draw the label on the CTA")
            label = label_image(label, (0, 1), case, files["label"])
            transform, metric = register_rigid(cta, ncct, case, settings)
            registered = sitk.Resample(ncct, cta, transform, sitk.sitkLinear, HU_AIR, sitk.sitkFloat32)
            if box_mm is not None:
                box = box_mm
                if template_image is not None:
                    case_to_template, _ = register_rigid(cta, template_image, case, settings)
                    box = template_box_on_case(box_mm, case_to_template)
                    summary.boxes[case] = box
                r = crop_box(cta, box, case)
                cta, registered, label = _crop(cta, r), _crop(registered, r), _crop(label, r)
            write_image(cta, work / "imagesTr" / f"{case}_0000.nii.gz", sitk.sitkFloat32)
            write_image(registered, work / "imagesTr" / f"{case}_0001.nii.gz", sitk.sitkFloat32)
            write_image(label, work / "labelsTr" / f"{case}.nii.gz", sitk.sitkUInt8)
            save_registration_qc(work / QC_FOLDER / f"{case}.png", cta, registered, label,
                                 f"{case}: mutual information {-metric:.3f}")
            summary.transforms[case], summary.metrics[case] = transform, metric
        generate_dataset_json(str(work), channel_names=dict(CHANNELS), labels=dict(LABELS), num_training_cases=len(cases),
                              file_ending=".nii.gz", dataset_name=dataset_name or output.name,
                              description="CTA (channel 0) and NCCT rigidly registered to the CTA (channel 1)",
                              channel_roles=CHANNEL_ROLES, crop_box_mm=list(box_mm) if box_mm is not None else None,
                              **({"crop_box_template": str(template)} if template is not None else {}),
                              registration={"transform": "Euler3DTransform", "metric": "Mattes mutual information",
                                            "shrink_factors": list(settings.shrink_factors),
                                            "smoothing_mm": list(settings.smoothing_mm)})
    return summary
