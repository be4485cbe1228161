"""Quality-control picture of one preprocessed case.

Three axial slices through the brain (rows), shown in radiological convention
(patient's left on the viewer's right, anterior up): the CT with the brain-mask
outline and the mid-sagittal plane, the contralateral image, and the difference
image. Skimming these pictures is the quickest way to spot a bad skull strip or
a wrong plane across hundreds of cases.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk


def _lps(image: sitk.Image) -> sitk.Image:
    # a fixed orientation makes every picture read the same, whatever the input's axes
    return sitk.DICOMOrient(image, "LPS")


def _plane_distance(image: sitk.Image, k: int, normal: np.ndarray, offset: float) -> np.ndarray:
    """Signed distance (mm) of every pixel of axial slice ``k`` to the plane ``normal . p = offset``."""
    nx, ny, _ = image.GetSize()
    jj, ii = np.mgrid[0:ny, 0:nx]
    idx = np.stack([ii, jj, np.full_like(ii, k)], -1).reshape(-1, 3) * np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    phys = np.array(image.GetOrigin()) + idx @ direction.T
    return (phys @ normal - offset).reshape(ny, nx)


def save_qc_png(path: Path | str, ct: sitk.Image, brain: sitk.Image, contralateral: sitk.Image | None = None,
                difference: sitk.Image | None = None, plane: tuple[Sequence[float], float] | None = None,
                title: str = "", window: tuple[float, float] = (0.0, 80.0), diff_range: float = 20.0) -> None:
    """Write the QC picture of a case.

    Args:
        path: Output ``.png``.
        ct: CT in HU (before skull stripping shows the mask outline best).
        brain: Brain mask on the CT grid.
        contralateral: Contralateral image, if computed.
        difference: Difference image, if computed.
        plane: ``(normal, offset)`` of the mid-sagittal plane in LPS mm, if known.
        title: Caption (case id and key numbers).
        window: Grey-level window for CT images in HU.
        diff_range: The difference image is shown in ``[-diff_range, diff_range]`` HU.

    Example:
        >>> save_qc_png("qc/sub-01.png", ct, mask, res.contralateral, diff,
        ...             (res.normal, res.offset), "sub-01")  # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    ct_l, brain_l = _lps(ct), _lps(brain)
    brain_a = sitk.GetArrayFromImage(brain_l) > 0
    zs = np.nonzero(brain_a.any(axis=(1, 2)))[0]
    if zs.size == 0:
        zs = np.arange(brain_a.shape[0])
    slices = [int(zs[0] + f * (zs[-1] - zs[0])) for f in (0.3, 0.5, 0.7)]
    panels = [("CT, brain outline, mid-sagittal plane", sitk.GetArrayFromImage(ct_l))]
    if contralateral is not None:
        panels.append(("contralateral", sitk.GetArrayFromImage(_lps(contralateral))))
    if difference is not None:
        panels.append(("difference (CT - contralateral)", sitk.GetArrayFromImage(_lps(difference))))

    fig = Figure(figsize=(3.2 * len(panels), 3.2 * len(slices) + 0.4), dpi=80)
    axes = fig.subplots(len(slices), len(panels), squeeze=False)
    for row, k in enumerate(slices):
        for col, (name, arr) in enumerate(panels):
            ax = axes[row][col]
            ax.set_axis_off()
            if name.startswith("difference"):
                shown = np.where(brain_a[k], arr[k], np.nan)
                ax.imshow(panels[0][1][k], cmap="gray", vmin=window[0], vmax=window[1])
                ax.imshow(shown, cmap="coolwarm", vmin=-diff_range, vmax=diff_range)
            else:
                ax.imshow(arr[k], cmap="gray", vmin=window[0], vmax=window[1])
            if col == 0:
                ax.contour(brain_a[k].astype(float), levels=[0.5], colors="red", linewidths=0.8)
                if plane is not None:
                    dist = _plane_distance(ct_l, k, np.asarray(plane[0], float), float(plane[1]))
                    if dist.min() < 0 < dist.max():
                        ax.contour(dist, levels=[0.0], colors="yellow", linewidths=0.8)
            if row == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))
