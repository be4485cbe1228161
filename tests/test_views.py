"""View-pair sampling: positions and crops."""
import numpy as np
import pytest

from nnunet_ssl.desd.views import crop_around, sample_view_centres


@pytest.mark.parametrize("seed", range(5))
def test_view_centres_overlap_and_stay_inside(seed):
    rng = np.random.default_rng(seed)
    shape, view = (40, 64, 50), (16, 32, 32)
    for _ in range(200):
        c = sample_view_centres(shape, view, 0.25, rng)
        assert np.all(np.abs(c[0] - c[1]) <= 2 * np.floor(0.25 * np.array(view)))
        lo = c - np.array(view) // 2
        hi = lo + np.array(view)
        assert np.all(lo >= 0) and np.all(hi <= np.array(shape))


def test_view_centres_follow_foreground():
    rng = np.random.default_rng(0)
    fg = np.array([[20, 30, 25]])
    for _ in range(50):
        c = sample_view_centres((40, 64, 50), (8, 8, 8), 0.0, rng, foreground=fg)
        assert c.tolist() == [[20, 30, 25], [20, 30, 25]]


def test_crop_around_pads_outside():
    a = np.arange(2 * 4 * 4 * 4, dtype=float).reshape(2, 4, 4, 4)
    crop = crop_around(a, (0, 0, 0), (2, 2, 2), -1)
    assert crop.shape == (2, 2, 2, 2)
    assert crop[:, 0].max() == -1 and crop[0, 1, 1, 1] == a[0, 0, 0, 0]
