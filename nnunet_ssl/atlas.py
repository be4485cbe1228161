"""The ASPECTS-zone atlas: a template CT and a map of the ten middle-cerebral-artery zones per hemisphere.

ASPECTS (the Alberta Stroke Program Early CT Score) divides each middle-cerebral-artery
territory into ten zones: caudate, lentiform nucleus, internal capsule, insular ribbon and
the cortical zones M1-M3 (ganglionic level: anterior, lateral, posterior) and M4-M6 (the
same above it). The zone map uses one label per zone and side:

* ``1..10``: the patient's left hemisphere, in :data:`ZONES` order;
* ``11..20``: the right hemisphere (left label + 10); ``0`` is background.

Users bring their own atlas (a template head CT in HU and its zone map on the template's
grid, any space: :func:`load_atlas`). No atlas ships with this package and none is
downloaded: no openly licensed ASPECTS atlas was available to us. For tests and the demo,
:func:`synthetic_atlas` *builds* one in the geometry of the project's head phantoms
(:mod:`nnunet_ssl.phantom`): the template is a lesion-free, noise-free phantom and the zones
are boxes and shell sectors laid out by rule inside its brain (see :func:`synthetic_zones`).
It is anatomy-shaped, not anatomy: real use needs a real atlas.

Example:
    >>> atlas = synthetic_atlas()
    >>> atlas.label_names()["right_M6"]
    20
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ssl.errors import UserError

ZONES = ("caudate", "lentiform", "internal_capsule", "insula", "M1", "M2", "M3", "M4", "M5", "M6")
SIDES = ("left", "right")
RIGHT_OFFSET = len(ZONES)  # right label = left label + 10
N_LABELS = 2 * len(ZONES)
SYNTHETIC_SHAPE = (48, 64, 64)  # the phantoms' default (z, y, x), 1 mm


def zone_label(zone: str, side: str) -> int:
    """The label of a zone on a side: ``zone_label("caudate", "left") == 1``, ``("M6", "right") == 20``."""
    if zone not in ZONES or side not in SIDES:
        raise ValueError(f"unknown zone {zone!r} or side {side!r}")
    return ZONES.index(zone) + 1 + (RIGHT_OFFSET if side == "right" else 0)


def label_names() -> dict[str, int]:
    """nnU-Net's ``labels`` entry: ``{"background": 0, "left_caudate": 1, ..., "right_M6": 20}``."""
    names = {"background": 0}
    for side in SIDES:
        names.update({f"{side}_{zone}": zone_label(zone, side) for zone in ZONES})
    return names


def swap_sides(zones: np.ndarray) -> np.ndarray:
    """Left labels become right ones and back (for a left-right mirrored image); background stays 0.

    Example:
        >>> swap_sides(np.array([0, 1, 10, 11, 20])).tolist()
        [0, 11, 20, 1, 10]
    """
    zones = np.asarray(zones)
    out = zones.copy()
    left = (zones >= 1) & (zones <= RIGHT_OFFSET)
    right = zones > RIGHT_OFFSET
    out[left] = zones[left] + RIGHT_OFFSET
    out[right] = zones[right] - RIGHT_OFFSET
    return out


@dataclass
class Atlas:
    """A template CT (HU), its zone map and its brain mask, all on the template's grid."""

    template: sitk.Image
    zones: sitk.Image
    brain: sitk.Image
    description: str

    @staticmethod
    def label_names() -> dict[str, int]:
        return label_names()


def synthetic_zones(brain: np.ndarray) -> np.ndarray:
    """Lay out the 20 zones inside a brain mask ``(z, y, x)`` whose ``+x`` is the patient's left.

    Coordinates are normalised to the brain's bounding half-extents about its centre: ``u``
    lateral (``+`` left), ``v`` antero-posterior (``+`` posterior, as the phantoms' ``+y``),
    ``w`` infero-superior (``+`` superior). Per hemisphere (``|u|``):

    * ganglionic level (``w`` in [-0.35, 0.05]), lateral of the ventricles: caudate
      ``|u|`` 0.30-0.44, ``v`` -0.4..0; internal capsule 0.44-0.56 (``v`` -0.3..0.25); lentiform
      0.56-0.72 (``v`` -0.25..0.2); insula 0.76-0.90 (``v`` -0.3..0.25). Each band is at least
      0.12 of the half-width wide, so that it survives registration to the small test phantoms;
    * cortex: the outer shell (normalised radius >= 0.8) with ``|u|`` >= 0.25, split by the
      axial angle ``atan2(v, |u|)`` into anterior (-75..-25 degrees), lateral (-25..25) and
      posterior (25..75): M1-M3 for ``w`` in [-0.5, 0.1], M4-M6 for ``w`` in (0.1, 0.6].

    Every zone lies inside ``brain``; left and right are mirror images about the brain's centre.
    """
    brain = np.asarray(brain, bool)
    idx = np.argwhere(brain)
    if idx.size == 0:
        raise ValueError("empty brain mask")
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    centre, half = (lo + hi) / 2.0, np.maximum((hi - lo) / 2.0, 1.0)
    z, y, x = np.meshgrid(*[(np.arange(n) - c) / h for n, c, h in zip(brain.shape, centre, half)], indexing="ij")
    w, v, u = z, y, x
    a = np.abs(u)
    radius = np.sqrt(u ** 2 + v ** 2 + w ** 2)
    angle = np.degrees(np.arctan2(v, a))
    out = np.zeros(brain.shape, np.uint8)

    def put(mask: np.ndarray, zone: str) -> None:
        for side, on_side in (("left", u > 0), ("right", u < 0)):
            out[mask & on_side & brain] = zone_label(zone, side)

    cortex = (radius >= 0.8) & (a >= 0.25)
    for level, band in (("low", (w >= -0.5) & (w <= 0.1)), ("high", (w > 0.1) & (w <= 0.6))):
        names = ("M1", "M2", "M3") if level == "low" else ("M4", "M5", "M6")
        for name, (a0, a1) in zip(names, ((-75, -25), (-25, 25), (25, 75))):
            put(cortex & band & (angle >= a0) & (angle < a1), name)
    deep = (w >= -0.35) & (w <= 0.05)
    put(deep & (a >= 0.30) & (a < 0.44) & (v >= -0.40) & (v <= 0.0), "caudate")
    put(deep & (a >= 0.44) & (a < 0.56) & (v >= -0.30) & (v <= 0.25), "internal_capsule")
    put(deep & (a >= 0.56) & (a < 0.72) & (v >= -0.25) & (v <= 0.20), "lentiform")
    put(deep & (a >= 0.76) & (a < 0.90) & (v >= -0.30) & (v <= 0.25), "insula")
    return out


def synthetic_atlas(shape: Sequence[int] = SYNTHETIC_SHAPE, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    seed: int = 12345) -> Atlas:
    """Build the default atlas: a lesion-free, noise-free head phantom and :func:`synthetic_zones` in its brain.

    Args:
        shape, spacing: ``(z, y, x)`` voxels and mm, as :func:`nnunet_ssl.phantom.make_stroke_phantom`.
        seed: The phantom's seed (head size and position).

    Returns:
        An :class:`Atlas` on an axis-aligned grid (identity direction, ``+x`` = patient's left).

    Example:
        >>> atlas = synthetic_atlas((32, 40, 40))
        >>> sorted(set(np.unique(sitk.GetArrayViewFromImage(atlas.zones)))) == list(range(21))
        True
    """
    from nnunet_ssl.phantom import make_stroke_phantom

    from nnunet_ssl.ct.brain_mask import brain_mask

    p = make_stroke_phantom(shape, spacing, side="none", noise_hu=0.0, seed=seed)
    images = []
    for array, kind in ((p.image, sitk.sitkFloat32), (synthetic_zones(p.brain), sitk.sitkUInt8)):
        image = sitk.Cast(sitk.GetImageFromArray(np.ascontiguousarray(array)), kind)
        image.SetSpacing([float(s) for s in reversed(p.spacing)])
        images.append(image)
    # the brain mask the registration check compares is made the way the CTs' masks are made
    images.append(brain_mask(images[0], min_volume_ml=0.0, max_volume_ml=float("inf")))
    return Atlas(*images, description=f"synthetic phantom atlas (shape {tuple(shape)}, spacing {tuple(spacing)} mm, "
                                      f"seed {seed}); for tests and demonstrations only")


def load_atlas(template: Path | str, zones: Path | str, brain: Optional[Path | str] = None,
               brain_mask_method: str = "builtin") -> Atlas:
    """Read a user's atlas: template CT (HU), zone map (labels 0-20, :data:`ZONES` order, right = left + 10).

    Args:
        template: The template head CT in HU (NIfTI, NRRD, MetaImage, DICOM folder).
        zones: The zone map on the template's voxel grid.
        brain: Optional brain mask of the template on its grid; default: computed with the
            project's CT brain mask (:func:`nnunet_ssl.ct.brain_mask.brain_mask`).
        brain_mask_method: Method for that brain mask.

    Raises:
        UserError: A file that is missing or unreadable, a zone map on another grid, labels
            outside 0-20, no zone on one side, or an empty brain mask.
    """
    from nnunet_ssl.ct.brain_mask import brain_mask
    from nnunet_ssl.ct.io import CaseError, read_image
    from nnunet_ssl.raw_dataset import grid_difference

    def read(path, what, kind):
        path = Path(path)
        if not path.exists():
            raise UserError(f"atlas {what} {path} does not exist")
        try:
            return read_image(path, kind)
        except CaseError as e:
            raise UserError(f"atlas {what} {path}: {e}") from None

    image = read(template, "template", sitk.sitkFloat32)
    zone_map = read(zones, "zone map", sitk.sitkFloat32)
    difference = grid_difference(image, zone_map)
    if difference:
        raise UserError(f"atlas zone map {zones} is not on the template's voxel grid ({difference})")
    values = np.unique(sitk.GetArrayViewFromImage(zone_map))
    bad = [float(v) for v in values if v != round(v) or not 0 <= v <= N_LABELS]
    if bad:
        raise UserError(f"atlas zone map {zones} holds value(s) {bad[:5]}; labels are 0 (background), 1-10 (left "
                        f"{', '.join(ZONES)}) and 11-20 (the same on the right)")
    if not any(1 <= v <= RIGHT_OFFSET for v in values) or not any(v > RIGHT_OFFSET for v in values):
        raise UserError(f"atlas zone map {zones} has no zone on one side (left labels 1-10, right 11-20)")
    zone_map = sitk.Cast(zone_map, sitk.sitkUInt8)
    if brain is not None:
        mask = sitk.Cast(read(brain, "brain mask", sitk.sitkFloat32) > 0.5, sitk.sitkUInt8)
        difference = grid_difference(image, mask)
        if difference:
            raise UserError(f"atlas brain mask {brain} is not on the template's voxel grid ({difference})")
        mask.CopyInformation(image)
    else:
        try:
            mask = brain_mask(image, method=brain_mask_method, min_volume_ml=0.0, max_volume_ml=float("inf"))
        except CaseError as e:
            raise UserError(f"atlas template {template}: brain mask failed ({e}); give it with --atlas-brain") from None
    if not sitk.GetArrayViewFromImage(mask).any():
        raise UserError(f"the atlas brain mask is empty (template {template}); give one with --atlas-brain")
    return Atlas(image, zone_map, mask, description=f"template {Path(template).resolve()}, zones "
                                                     f"{Path(zones).resolve()}")
