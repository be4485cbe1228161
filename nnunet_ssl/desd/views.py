"""Pairs of views for DeSD: two overlapping crops of one region of a case.

The sampling of crop positions is a pure numpy function; :class:`ViewPairLoader`
wires it to nnU-Net's preprocessed datasets and to nnU-Net's own augmentation
pipeline (spatial transform with scaling, noise, blur, brightness, contrast,
gamma, mirroring), applied to each view independently.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.dataloading.data_loader import DataLoader
from threadpoolctl import threadpool_limits


def sample_view_centres(shape: Sequence[int], view_size: Sequence[int], jitter: float,
                        rng: np.random.Generator,
                        foreground: Optional[np.ndarray] = None) -> np.ndarray:
    """Centres of two views of one region of an image.

    The shared region centre is a random foreground voxel when ``foreground`` (an
    ``(n, ndim)`` array of voxel coordinates, e.g. nnU-Net's ``class_locations``) is
    given and not empty, otherwise a uniform position where a view fits inside the
    image. Each view centre then moves from it by up to ``jitter * view_size`` voxels
    per axis, and is clipped so the view stays inside the image where it can.

    Returns:
        ``(2, ndim)`` integer array of view centres.

    Example:
        >>> c = sample_view_centres((40, 40, 40), (16, 16, 16), 0.25, np.random.default_rng(0))
        >>> c.shape, bool((abs(c[0] - c[1]) <= 8).all())
        ((2, 3), True)
    """
    shape = np.asarray(shape, int)
    view = np.asarray(view_size, int)
    lo = np.minimum(view // 2, shape // 2)
    hi = np.maximum(shape - (view - view // 2), lo)
    if foreground is not None and len(foreground) > 0:
        centre = np.asarray(foreground[rng.integers(len(foreground))], int)[-len(shape):]
    else:
        centre = np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi)])
    max_shift = np.floor(jitter * view).astype(int)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(2, len(shape)))
    return np.clip(centre + shifts, lo, hi)


def crop_around(array: np.ndarray, centre: Sequence[int], size: Sequence[int], pad_value) -> np.ndarray:
    """Crop ``array`` (``(C, *spatial)``) to ``size`` around ``centre``, padding outside the image."""
    lbs = [int(c) - s // 2 for c, s in zip(centre, size)]
    bbox = [[0, array.shape[0]]] + [[lb, lb + int(s)] for lb, s in zip(lbs, size)]
    return crop_and_pad_nd(array, bbox, pad_value)


class ViewPairLoader(DataLoader):
    """batchgenerators data loader yielding ``{'data': view1, 'data2': view2, 'keys': ...}``.

    Args:
        dataset: An nnU-Net dataset (``nnUNetDatasetBlosc2`` or ``nnUNetDatasetNumpy``).
        batch_size: Samples per batch (each gives two views).
        view_size: Spatial size of the views the network sees.
        crop_size: Size cut from the image before augmentation (nnU-Net's enlarged
            "initial patch size", so that rotation and scaling have context).
        transforms: A batchgeneratorsv2 transform applied to each view separately.
        jitter: See :func:`sample_view_centres`.
    """

    def __init__(self, dataset, batch_size: int, view_size: Sequence[int], crop_size: Sequence[int],
                 transforms=None, jitter: float = 0.25):
        super().__init__(dataset, batch_size, 1, None, True, False, True)
        self.indices = dataset.identifiers
        self.view_size = tuple(int(v) for v in view_size)
        self.crop_size = tuple(int(v) for v in crop_size)
        self.transforms = transforms
        self.jitter = jitter

    def _foreground(self, properties: dict) -> Optional[np.ndarray]:
        locations = properties.get("class_locations") or {}
        coords = [np.asarray(v) for k, v in locations.items() if k not in (0, -1) and len(v) > 0]
        return np.concatenate(coords)[:, 1:] if coords else None  # drop the channel column

    def generate_train_batch(self) -> dict:
        keys = self.get_indices()
        # one generator per batch, seeded from numpy's global state, which batchgenerators
        # seeds differently in each worker process
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        views: list[Optional[torch.Tensor]] = [None, None]
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for j, key in enumerate(keys):
                data, seg, _, properties = self._data.load_case(key)
                centres = sample_view_centres(data.shape[1:], self.view_size, self.jitter, rng,
                                              self._foreground(properties))
                for v, centre in enumerate(centres):
                    image = torch.from_numpy(crop_around(data, centre, self.crop_size, 0)).float()
                    mask = torch.from_numpy(
                        crop_around(seg, centre, self.crop_size, -1).astype(np.int16))
                    if self.transforms is not None:
                        image = self.transforms(image=image, segmentation=mask)["image"]
                    if views[v] is None:
                        views[v] = torch.empty((self.batch_size, *image.shape), dtype=torch.float32)
                    views[v][j] = image
        return {"data": views[0], "data2": views[1], "keys": keys}
