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


from nnunet_ssl.desd.settings import DeSDSettings  # noqa: E402
from nnunet_ssl.desd.views import ViewPairLoader, sample_slab, sample_slab_view_centres  # noqa: E402


def _brain(shape=(60, 48, 56), box=((10, 50), (8, 40), (6, 50))):
    brain = np.zeros(shape, bool)
    brain[tuple(slice(a, b) for a, b in box)] = True
    return brain


@pytest.mark.parametrize("seed", range(3))
def test_slab_views_lie_inside_one_slab_in_the_brain_box(seed):
    rng = np.random.default_rng(seed)
    brain = _brain()
    brain[10:20, 8:20] = False  # an uneven brain, so slabs differ in brain content
    view, depth = np.array((16, 24, 24)), 24
    for _ in range(300):
        c = sample_slab_view_centres(brain, view, depth, 0.4, rng)
        lo, hi = c - view // 2, c - view // 2 + view
        assert np.all(lo[:, 0] >= 10) and np.all(hi[:, 0] <= 50)  # inside the box along the slab axis
        assert hi[:, 0].max() - lo[:, 0].min() <= depth  # both views inside one slab
        assert np.all(c[:, 1] >= 8) and np.all(c[:, 1] < 40) and np.all(c[:, 2] >= 6) and np.all(c[:, 2] < 50)
        assert np.all(lo >= 0) and np.all(hi <= np.array(brain.shape))


def test_slab_rejection_rule_gives_the_stated_acceptance():
    # slabs of one slice; brain fractions 0.45 (kept), 0.3 and 0.1 (kept with that probability) and 0
    counts, area = np.array([45, 30, 10, 0]), 100
    rng = np.random.default_rng(1234)
    n = 20000
    hist = np.bincount([sample_slab(counts, area, 1, 0.4, rng) for _ in range(n)], minlength=4) / n
    accept = np.array([1.0, 0.3, 0.1, 0.0])
    want = accept / accept.sum()  # uniform proposals, accepted with these probabilities
    sigma = np.sqrt(want * (1 - want) / n)
    assert np.all(np.abs(hist - want) <= 4 * sigma + 1e-12), (hist, want)


class _FakeDataset:
    """Two channels: the image and its left-right mirror (a perfect contralateral image)."""

    def __init__(self):
        rng = np.random.default_rng(0)
        image = rng.normal(size=(40, 32, 48)).astype(np.float32)
        self.data = np.stack([image, image[..., ::-1]])
        self.seg = _brain((40, 32, 48), ((2, 38), (2, 30), (4, 44)))[None].astype(np.int16)
        self.identifiers = ["a", "b"]

    def load_case(self, key):
        return self.data, self.seg, None, {"class_locations": {}}


def test_symmetry_view_is_the_mirrored_location_before_augmentation():
    ds = _FakeDataset()
    settings = DeSDSettings(view_size=(16, 16, 16), slab_depth=24, symmetry_channel=1, symmetry_prob=1.0)
    loader = ViewPairLoader(ds, 4, (16, 16, 16), settings, transforms=None)
    np.random.seed(0)
    batch = loader.generate_train_batch()
    assert batch["symmetric"].all()
    assert batch["data"].shape == batch["data2"].shape == (4, 1, 16, 16, 16)
    width = ds.data.shape[-1]
    found = 0
    for v1, v2 in zip(batch["data"].numpy(), batch["data2"].numpy()):
        # view 1 is a crop of the original; find its centre, then check view 2 against the mirror
        for z in range(8, 33):
            for y in range(8, 25):
                for x in range(8, 41):
                    if np.array_equal(crop_around(ds.data[:1], (z, y, x), (16, 16, 16), 0), v1):
                        mirrored = crop_around(ds.data[:1], (z, y, width - x), (16, 16, 16), 0)[..., ::-1]
                        assert np.array_equal(v2, mirrored)
                        found += 1
    assert found == 4


def test_symmetry_off_or_improbable_uses_the_original_channels_only():
    ds = _FakeDataset()
    settings = DeSDSettings(view_size=(16, 16, 16), slab_depth=24, symmetry_channel=1, symmetry_prob=0.0)
    batch = ViewPairLoader(ds, 3, (16, 16, 16), settings).generate_train_batch()
    assert not batch["symmetric"].any() and batch["data2"].shape[1] == 1
    two = ViewPairLoader(ds, 3, (16, 16, 16), DeSDSettings(view_size=(16, 16, 16))).generate_train_batch()
    assert two["data"].shape[1] == two["data2"].shape[1] == 2  # CT + second channel both in each view


class _ThreeChannelDataset(_FakeDataset):
    """CT, a difference-like second channel and, in channel 2, the CT's mirror (the contralateral image)."""

    def __init__(self):
        super().__init__()
        image = self.data[0]
        self.data = np.stack([image, 10 + image, image[..., ::-1]])


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_symmetry_with_three_channels_keeps_the_other_channels_in_both_views(prob):
    ds = _ThreeChannelDataset()
    settings = DeSDSettings(view_size=(16, 16, 16), slab_depth=24, symmetry_channel=2, symmetry_prob=prob)
    np.random.seed(0)
    batch = ViewPairLoader(ds, 3, (16, 16, 16), settings).generate_train_batch()
    # the encoder takes every channel but the contralateral one, in both views
    assert batch["data"].shape == batch["data2"].shape == (3, 2, 16, 16, 16)
    v1, v2 = batch["data"].numpy(), batch["data2"].numpy()
    assert np.allclose(v1[:, 1], 10 + v1[:, 0])  # view 1: CT and second channel of one place
    if prob == 1.0:
        assert batch["symmetric"].all()
        width = ds.data.shape[-1]
        for a, b in zip(v1, v2):
            # view 2: the contralateral image stands in for the CT; the second channel is the original's
            hits = [(z, y, x) for z in range(8, 33) for y in range(8, 25) for x in range(8, 41)
                    if np.array_equal(crop_around(ds.data[:1], (z, y, x), (16, 16, 16), 0)[0], a[0])]
            assert len(hits) == 1
            z, y, x = hits[0]
            assert np.array_equal(b[0], crop_around(ds.data[:1], (z, y, width - x), (16, 16, 16), 0)[0][..., ::-1])
            assert np.array_equal(b[1], a[1])
    else:
        assert not batch["symmetric"].any()


class _SliceDataset(_FakeDataset):
    """Every voxel of slice z holds z plus an in-plane pattern under 0.5: a view tells its slice."""

    def __init__(self):
        super().__init__()
        z = np.arange(40, dtype=np.float32)[:, None, None]
        pattern = np.random.default_rng(1).uniform(0, 0.4, size=(1, 32, 48)).astype(np.float32)
        self.data = (z + pattern)[None]


@pytest.mark.parametrize("sampling", ["slab", "region"])
def test_2d_views_are_two_crops_of_one_slice(sampling):
    ds = _SliceDataset()
    settings = DeSDSettings(view_size=(16, 16), view_sampling=sampling, slab_depth=24, view_jitter=0.5)
    np.random.seed(0)
    batch = ViewPairLoader(ds, 6, (16, 16), settings).generate_train_batch()
    assert batch["data"].shape == batch["data2"].shape == (6, 1, 16, 16)
    for v1, v2 in zip(batch["data"].numpy(), batch["data2"].numpy()):
        z1, z2 = np.unique(np.floor(v1)), np.unique(np.floor(v2))
        assert len(z1) == 1 and z1.tolist() == z2.tolist()  # each view inside one slice, the same slice
        if sampling == "slab":
            assert 2 <= z1[0] < 38  # a slice of the brain (its box: slices 2..37)
        # a crop of that slice (not a resampled or mirrored one)
        plane = ds.data[0, int(z1[0])]
        assert any(np.array_equal(plane[y:y + 16, x:x + 16], v1[0]) for y in range(17) for x in range(33))
    # the crop and the view must have as many axes
    with pytest.raises(ValueError, match="differ in axes"):
        ViewPairLoader(ds, 2, (16, 16, 16), settings)
