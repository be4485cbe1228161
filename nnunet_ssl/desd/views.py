"""Pairs of views for DeSD.

Two ways to place the two views of a sample (setting ``view_sampling``):

* ``"slab"`` (the seed paper, section 3.4.1): draw a slab of ``slab_depth`` slices along
  the first array axis inside the brain's bounding box; a slab holding less than
  ``slab_min_brain`` brain is redrawn with probability equal to its background
  fraction; both views are drawn inside the slab (in-plane inside the brain's box), so
  they overlap strongly.
* ``"region"``: a shared centre on a random foreground voxel, each view shifted from it
  by up to ``view_jitter`` of the view size.

The brain is the label of nnU-Net's preprocessed case (SSL datasets carry the brain mask
as label); a case without one counts as all brain.

With ``symmetry_channel`` set (the dataset's contralateral-image channel), with
probability ``symmetry_prob`` the second view is cut at the first view's location from
the contralateral image instead of the original (symmetry augmentation, paper 3.7.3);
the network sees the other channels only. With more than two channels the contralateral
image replaces the first of the other channels (the image it mirrors, the CT) in the second
view and every further channel is kept, so both views carry the same number of channels.

On a 2D configuration (a two-axis ``view_size``, nnU-Net's ``2d``) a sample is a slice: the
centres are drawn in the volume as above for views one slice thick, the second view is moved to
the first view's slice, and both are cut from that slice (as nnU-Net's 2D loader cuts its
patches from one slice of the 3D case).

Position sampling is pure numpy; :class:`ViewPairLoader` wires it to nnU-Net's
datasets and augmentation (each view augmented separately).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.dataloading.data_loader import DataLoader
from threadpoolctl import threadpool_limits

from nnunet_ssl.desd.settings import DeSDSettings


def _centre_bounds(shape: np.ndarray, view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest centre that keeps a view inside the image (the middle if it cannot fit)."""
    lo = np.minimum(view // 2, shape // 2)
    hi = np.maximum(shape - (view - view // 2), lo)
    return lo, hi


def sample_view_centres(shape: Sequence[int], view_size: Sequence[int], jitter: float,
                        rng: np.random.Generator,
                        foreground: Optional[np.ndarray] = None) -> np.ndarray:
    """Centres of two views around one region (``view_sampling="region"``).

    The shared centre is a random row of ``foreground`` (``(n, ndim)`` voxel coordinates)
    when given and not empty, otherwise uniform; each view centre moves from it by up to
    ``jitter * view_size`` voxels per axis and is clipped so the view stays inside.

    Returns:
        ``(2, ndim)`` integer array.

    Example:
        >>> c = sample_view_centres((40, 40, 40), (16, 16, 16), 0.25, np.random.default_rng(0))
        >>> c.shape, bool((abs(c[0] - c[1]) <= 8).all())
        ((2, 3), True)
    """
    shape, view = np.asarray(shape, int), np.asarray(view_size, int)
    lo, hi = _centre_bounds(shape, view)
    if foreground is not None and len(foreground) > 0:
        centre = np.asarray(foreground[rng.integers(len(foreground))], int)[-len(shape):]
    else:
        centre = np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi)])
    max_shift = np.floor(jitter * view).astype(int)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(2, len(shape)))
    return np.clip(centre + shifts, lo, hi)


def slab_brain_fraction(slice_counts: np.ndarray, area: int, start: int, depth: int) -> float:
    """Brain fraction of slices ``[start, start + depth)`` given brain voxels per slice within the box."""
    return float(slice_counts[start:start + depth].sum()) / float(depth * area)


def sample_slab(slice_counts: np.ndarray, area: int, depth: int, min_fraction: float,
                rng: np.random.Generator, max_tries: int = 50) -> int:
    """First slice of a slab drawn by the paper's rejection rule.

    Slab starts are uniform over the positions inside ``slice_counts`` (the brain's extent
    along the slab axis). A slab with brain fraction ``f < min_fraction`` is redrawn with
    probability ``1 - f``; after ``max_tries`` the last draw is kept.

    Example:
        >>> sample_slab(np.full(30, 100), 100, 24, 0.4, np.random.default_rng(0)) in range(7)
        True
    """
    n_starts = max(1, len(slice_counts) - depth + 1)
    start = 0
    for _ in range(max_tries):
        start = int(rng.integers(n_starts))
        f = slab_brain_fraction(slice_counts, area, start, depth)
        if f >= min_fraction or rng.random() < f:
            break
    return start


def sample_slab_view_centres(brain: np.ndarray, view_size: Sequence[int], depth: int, min_fraction: float,
                             rng: np.random.Generator) -> np.ndarray:
    """Centres of two views inside one slab of the brain (``view_sampling="slab"``).

    Args:
        brain: Boolean mask ``(z, y, x)``; the slab runs along the first axis.
        view_size: View size; ``view_size[0] <= depth``.
        depth: Slab thickness in slices.
        min_fraction: Brain fraction under which slabs are redrawn.

    Returns:
        ``(2, 3)`` integer array of view centres.
    """
    shape, view = np.asarray(brain.shape), np.asarray(view_size, int)
    if brain.any():
        coords = [np.nonzero(brain.any(axis=tuple(a for a in range(brain.ndim) if a != d)))[0]
                  for d in range(brain.ndim)]
        box_lo = np.array([c[0] for c in coords])
        box_hi = np.array([c[-1] + 1 for c in coords])
    else:
        box_lo, box_hi = np.zeros(brain.ndim, int), shape.copy()
    box = tuple(slice(a, b) for a, b in zip(box_lo, box_hi))
    in_box = brain[box] if brain.any() else np.ones(tuple(box_hi - box_lo), bool)
    counts = in_box.reshape(in_box.shape[0], -1).sum(axis=1)
    area = int(np.prod(in_box.shape[1:]))
    start = box_lo[0] + sample_slab(counts, area, depth, min_fraction, rng)
    # slab limits in the image (the brain may be thinner than a slab: then the slab overhangs it)
    slab_lo = int(np.clip(start, 0, max(0, shape[0] - depth)))
    slab_hi = min(int(shape[0]), slab_lo + depth)
    lo, hi = _centre_bounds(shape, view)
    z_lo = max(lo[0], slab_lo + view[0] // 2)
    z_hi = max(z_lo, min(hi[0], slab_hi - (view[0] - view[0] // 2)))
    plane_lo = np.clip(box_lo[1:], lo[1:], hi[1:])
    plane_hi = np.clip(box_hi[1:] - 1, plane_lo, hi[1:])
    centres = np.empty((2, 3), int)
    for v in range(2):
        centres[v, 0] = rng.integers(z_lo, z_hi + 1)
        centres[v, 1:] = [rng.integers(a, b + 1) for a, b in zip(plane_lo, plane_hi)]
    return centres


def crop_around(array: np.ndarray, centre: Sequence[int], size: Sequence[int], pad_value) -> np.ndarray:
    """Crop ``array`` (``(C, *spatial)``) to ``size`` around ``centre``, padding outside the image."""
    lbs = [int(c) - s // 2 for c, s in zip(centre, size)]
    bbox = [[0, array.shape[0]]] + [[lb, lb + int(s)] for lb, s in zip(lbs, size)]
    return crop_and_pad_nd(array, bbox, pad_value)


class ViewPairLoader(DataLoader):
    """batchgenerators data loader yielding ``{'data': view1, 'data2': view2, 'keys', 'symmetric'}``.

    Args:
        dataset: An nnU-Net dataset (``nnUNetDatasetBlosc2`` or ``nnUNetDatasetNumpy``).
        batch_size: Samples per batch (each gives two views).
        crop_size: Size cut from the image before augmentation (nnU-Net's enlarged
            "initial patch size", so that rotation and scaling have context).
        settings: View size and the sampling settings (see the module docstring).
        transforms: A batchgeneratorsv2 transform applied to each view separately.
    """

    def __init__(self, dataset, batch_size: int, crop_size: Sequence[int], settings: DeSDSettings,
                 transforms=None):
        super().__init__(dataset, batch_size, 1, None, True, False, True)
        self.indices = dataset.identifiers
        self.settings = settings
        self.view_size = tuple(int(v) for v in settings.view_size)
        self.crop_size = tuple(int(v) for v in crop_size)
        if len(self.crop_size) != len(self.view_size):
            raise ValueError(f"crop size {list(self.crop_size)} and view size {list(self.view_size)} differ in axes")
        # a 2D view is a 3D view one slice thick; the slice axis is dropped after cropping
        self.slice_views = len(self.view_size) == 2
        if self.slice_views:
            self.view_size, self.crop_size = (1, *self.view_size), (1, *self.crop_size)
        self.transforms = transforms

    @staticmethod
    def _foreground(properties: dict) -> Optional[np.ndarray]:
        locations = properties.get("class_locations") or {}
        coords = [np.asarray(v) for k, v in locations.items() if k not in (0, -1) and len(v) > 0]
        return np.concatenate(coords)[:, 1:] if coords else None  # drop the channel column

    def view_centres(self, data, seg, properties, rng: np.random.Generator) -> np.ndarray:
        s = self.settings
        if s.view_sampling == "slab":
            centres = sample_slab_view_centres(np.asarray(seg[0]) > 0, self.view_size, s.slab_depth,
                                               s.slab_min_brain, rng)
        else:
            centres = sample_view_centres(data.shape[1:], self.view_size, s.view_jitter, rng,
                                          self._foreground(properties))
        if self.slice_views:
            centres[1, 0] = centres[0, 0]  # both views from one slice
        return centres

    def generate_train_batch(self) -> dict:
        s = self.settings
        keys = self.get_indices()
        # one generator per batch, seeded from numpy's global state, which batchgenerators
        # seeds differently in each worker process
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        views: list[Optional[torch.Tensor]] = [None, None]
        symmetric = np.zeros(len(keys), bool)
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for j, key in enumerate(keys):
                data, seg, _, properties = self._data.load_case(key)
                centres = self.view_centres(data, seg, properties, rng)
                channels = list(range(data.shape[0]))
                sources = [channels, channels]
                if s.symmetry_channel is not None:
                    if s.symmetry_channel >= data.shape[0]:
                        raise ValueError(f"symmetry_channel {s.symmetry_channel} but case {key} has "
                                         f"{data.shape[0]} channels")
                    original = [c for c in channels if c != s.symmetry_channel]
                    sources = [original, original]
                    if rng.random() < s.symmetry_prob:
                        symmetric[j] = True
                        centres[1] = centres[0]  # same location, mirrored anatomy
                        # the contralateral image stands in for the image it mirrors (the first other
                        # channel); any further channels are kept, so both views have the same channels
                        sources[1] = [s.symmetry_channel] + original[1:]
                for v, centre in enumerate(centres):
                    crop = crop_around(data, centre, self.crop_size, 0)[sources[v]]
                    mask = crop_around(seg, centre, self.crop_size, -1).astype(np.int16)
                    if self.slice_views:
                        crop, mask = crop[:, 0], mask[:, 0]
                    image = torch.from_numpy(np.ascontiguousarray(crop)).float()
                    mask = torch.from_numpy(np.ascontiguousarray(mask))
                    if self.transforms is not None:
                        image = self.transforms(image=image, segmentation=mask)["image"]
                    if views[v] is None:
                        views[v] = torch.empty((self.batch_size, *image.shape), dtype=torch.float32)
                    views[v][j] = image
        return {"data": views[0], "data2": views[1], "keys": keys, "symmetric": symmetric}
