"""Writing small head CT phantoms as users' inputs: any orientation, NIfTI, NRRD or a DICOM series."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.phantom import make_stroke_phantom

SHAPE = (32, 40, 40)  # (z, y, x)


def phantom_images(spacing: Sequence[float] = (2.0, 2.0, 2.0), orientation: str = "LPS", seed: int = 0,
                   side: str = "none", shape: Sequence[int] = SHAPE) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """``(CT, brain, lesion)`` of one phantom, its axes put in ``orientation`` (same anatomy in space)."""
    p = make_stroke_phantom(shape, spacing, side=side, seed=seed)
    out = []
    for arr in (p.image, p.brain.astype(np.uint8), p.lesion.astype(np.uint8)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing([float(s) for s in reversed(spacing)])
        img.SetOrigin((-40.0, -50.0, 10.0))
        out.append(sitk.DICOMOrient(img, orientation))
    return out[0], out[1], out[2]


def write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """Write a 3D CT as a DICOM series (int16, rescale 1/0), one file a slice."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(sitk.Round(image), sitk.sitkInt16)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.424242"
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        tags = {
            "0008|0060": "CT", "0020|000d": series + ".1", "0020|000e": series + ".2",
            "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                         direction[1], direction[4], direction[7])),
            "0020|0032": "\\".join(f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1), "0018|0050": f"{image.GetSpacing()[2]:.4f}",
            "0028|1052": "0", "0028|1053": "1", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series}.3.{k + 1}",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(sl)


def tree_hash(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``, with modification times ignored."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))
