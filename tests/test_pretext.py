"""Pretext methods on the shared trainer base: Models Genesis, in-painting, rotation (maths and settings)."""
import pytest
import torch

from nnunet_ssl.ssl.genesis.settings import GenesisSettings
from nnunet_ssl.ssl.genesis.transforms import (
    bezier_lookup, box_mask, genesis_corrupt, inpaint, local_shuffle, nonlinear_intensity, outpaint, paint_boxes,
    random_box, unit_range)
from nnunet_ssl.ssl.inpainting.masks import cube_mask, default_cube, fill_values, inpainting_corrupt
from nnunet_ssl.ssl.inpainting.settings import InpaintingSettings
from nnunet_ssl.ssl.restoration import masked_mse
from nnunet_ssl.ssl.rotation.rotation import angle_of, label_of, rotate, square_crop
from nnunet_ssl.ssl.rotation.settings import RotationSettings


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ rotation
def test_rotation_labels_are_quarter_turns_and_undo():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(1, 2, 3, 4, 4).repeat(4, 1, 1, 1, 1)
    labels = torch.tensor([0, 1, 2, 3])
    turned = rotate(x, labels, (1, 2))
    plane = x[0, 0, 0]  # one in-plane slice; labels turn it from the plane's first axis to its second
    assert torch.equal(turned[0, 0, 0], plane)
    assert torch.equal(turned[1, 0, 0], plane.flip(1).T)  # 90 degrees: [[a, b], [c, d]] -> [[b, d], [a, c]]
    assert torch.equal(turned[2, 0, 0], plane.flip(0).flip(1))  # 180 degrees
    assert torch.equal(turned[3, 0, 0], plane.T.flip(1))  # 270 degrees
    assert torch.equal(rotate(turned, -labels, (1, 2)), x)  # k, then -k: the identity
    assert torch.equal(rotate(turned, (4 - labels) % 4, (1, 2)), x)
    assert all(label_of(angle_of(k)) == k for k in range(4))
    assert [label_of(a) for a in (0, 90, 180, 270, 360, -90)] == [0, 1, 2, 3, 0, 3]
    with pytest.raises(ValueError, match="45"):
        label_of(45)
    # a quarter turn moves each slice within its plane only: slice z of the output comes from slice z
    assert torch.equal(turned[:, :, 1].sum(dim=(-1, -2)), x[:, :, 1].sum(dim=(-1, -2)))


def test_square_crop_centres_the_longer_plane_axis():
    x = torch.arange(1 * 1 * 2 * 4 * 8, dtype=torch.float32).view(1, 1, 2, 4, 8)
    crop = square_crop(x, (1, 2))
    assert crop.shape == (1, 1, 2, 4, 4) and torch.equal(crop, x[..., 2:6])
    assert rotate(crop, torch.tensor([1]), (1, 2)).shape == crop.shape


def test_rotation_settings():
    assert RotationSettings.from_dict(None).plane_for([32, 40, 40]) == (1, 2)
    assert RotationSettings.from_dict({"plane": [0, 2]}).plane_for([32, 40, 40]) == (0, 2)
    assert RotationSettings().plane_for([64, 64]) == (0, 1)
    for bad in ([1, 1], [1], "1,2", [0, True]):
        with pytest.raises(ValueError, match="ssl_rotation setting 'plane' must be two different spatial axes"):
            RotationSettings.from_dict({"plane": bad})
    with pytest.raises(ValueError, match="plane \\[1, 3\\] names an axis"):
        RotationSettings.from_dict({"plane": [1, 3]}).plane_for([32, 40, 40])


def test_rotation_network_keeps_the_unet_keys_and_trains_only_encoder_and_head(tiny_unet):
    from nnunet_ssl.ssl.rotation.rotation import RotationNetwork

    keys = set(tiny_unet.state_dict())
    net = RotationNetwork(tiny_unet)
    assert set(net.state_dict()) == keys | {"head.weight", "head.bias"}
    logits = net(torch.randn(2, 1, 8, 16, 16))
    assert logits.shape == (2, 4)
    logits.sum().backward()
    trained = {n for n, p in net.named_parameters() if p.grad is not None}
    assert trained and all(n.startswith(("encoder.", "head.")) for n in trained)
    assert not any(p.requires_grad for n, p in net.named_parameters() if n.startswith("decoder.stages"))


# ---------------------------------------------------------------- in-painting
@pytest.mark.parametrize("cube, ratio", [((8, 10, 10), 0.25), ((4, 4, 4), 0.6), ((16, 20, 20), 0.5)])
def test_inpainting_mask_covers_the_requested_ratio(cube, ratio):
    shape = (3, 2, 32, 40, 40)
    mask = cube_mask(shape, cube, ratio, _gen(1))
    n_cubes = (32 // cube[0]) * (40 // cube[1]) * (40 // cube[2])
    assert mask.shape == (3, 1, 32, 40, 40)
    for sample in mask:
        assert int(sample.sum()) == round(ratio * n_cubes) * cube[0] * cube[1] * cube[2]
    assert not torch.equal(mask, cube_mask(shape, cube, ratio, _gen(2)))


def test_inpainting_fills_only_the_cubes_and_the_loss_counts_only_them():
    torch.manual_seed(0)
    data = torch.randn(2, 2, 8, 8, 8)
    before = data.clone()
    corrupted, mask = inpainting_corrupt(data, (4, 4, 4), 0.25, "white", _gen(0))
    assert torch.equal(data, before)  # the input is not modified
    hidden = mask.expand_as(data)
    assert torch.equal(corrupted[~hidden], data[~hidden])
    white = data.amax(dim=(2, 3, 4), keepdim=True).expand_as(data)
    assert torch.equal(corrupted[hidden], white[hidden])

    prediction = torch.randn_like(data)
    loss = masked_mse(prediction, data, mask)
    assert loss.item() == pytest.approx(((prediction - data)[hidden] ** 2).mean().item(), rel=1e-6)
    outside = torch.nonzero(~hidden)[0].tolist()
    changed = prediction.clone()
    changed[tuple(outside)] += 100.0  # an uncorrupted voxel of the prediction: the loss does not move
    assert masked_mse(changed, data, mask).item() == loss.item()
    inside = torch.nonzero(hidden)[0].tolist()
    changed[tuple(inside)] += 1.0
    assert masked_mse(changed, data, mask).item() != loss.item()


def test_noise_fill_has_the_patch_statistics():
    data = torch.randn(1, 1, 32, 32, 32) * 3 + 5
    noise = fill_values(data, "noise", _gen(0))
    assert noise.shape == data.shape
    assert noise.mean().item() == pytest.approx(5, abs=0.05) and noise.std().item() == pytest.approx(3, rel=0.02)
    with pytest.raises(ValueError, match="unknown fill 'grey'"):
        fill_values(data, "grey")


def test_inpainting_settings():
    s = InpaintingSettings.from_dict(None)
    assert (s.ratio, s.fill, s.cube_size) == (0.25, "white", None)
    assert s.cube_for([32, 40, 40]) == default_cube([32, 40, 40]) == (8, 10, 10)
    assert InpaintingSettings.from_dict({"cube_size": 4}).cube_for([8, 16, 16]) == (4, 4, 4)
    with pytest.raises(ValueError, match="does not tile"):
        InpaintingSettings.from_dict({"cube_size": [3, 4, 4]}).cube_for([8, 16, 16])
    for name, value in [("ratio", 1.0), ("fill", "grey"), ("cube_size", [0]), ("num_epochs", 0)]:
        with pytest.raises(ValueError, match=f"ssl_inpainting setting '{name}'"):
            InpaintingSettings.from_dict({name: value})
    with pytest.raises(ValueError, match=r"unknown ssl_inpainting setting\(s\) \['ratoi'\]"):
        InpaintingSettings.from_dict({"ratoi": 0.3})


# ------------------------------------------------------------ Models Genesis
def test_bezier_curve_is_monotone_and_keeps_or_swaps_the_endpoints():
    controls = torch.rand(16, 2, 2, generator=_gen(0))
    xs, ys = bezier_lookup(controls)
    assert torch.all(xs.diff(dim=1) >= 0) and torch.all(ys.diff(dim=1) >= 0)
    values = torch.linspace(0, 1, 257).repeat(16, 1).view(16, 1, 257)
    up = nonlinear_intensity(values, controls, torch.zeros(16, dtype=torch.bool))
    down = nonlinear_intensity(values, controls, torch.ones(16, dtype=torch.bool))
    assert torch.all(up.diff(dim=-1) >= -1e-6) and torch.all(down.diff(dim=-1) <= 1e-6)
    assert torch.allclose(up[..., 0], torch.zeros(16, 1), atol=1e-6)
    assert torch.allclose(up[..., -1], torch.ones(16, 1), atol=1e-6)
    assert torch.allclose(down[..., 0], torch.ones(16, 1), atol=1e-6)
    assert torch.allclose(down[..., -1], torch.zeros(16, 1), atol=1e-6)
    assert up.min() >= 0 and up.max() <= 1
    # a curve through (1/3, 0.1), (2/3, 0.2) bends down: values below the diagonal
    bent = nonlinear_intensity(values[:1], torch.tensor([[[1 / 3, 0.1], [2 / 3, 0.2]]]), torch.tensor([False]))
    assert torch.all(bent[..., 1:-1] < values[:1, :, 1:-1])


def test_local_shuffle_keeps_the_values_of_each_block():
    x = torch.randn(2, 2, 7, 8, 8, generator=_gen(0))  # 7: one slice beyond the last whole block
    block = (2, 4, 4)
    grid = (3, 2, 2)
    selected = torch.zeros(2, 12, dtype=torch.bool)
    selected[0, [0, 5, 11]] = True
    selected[1] = True
    out = local_shuffle(x, block, selected, _gen(1))
    assert out.shape == x.shape
    assert torch.equal(out[:, :, 6], x[:, :, 6])  # voxels beyond the whole blocks stay
    n = 0
    for b in range(2):
        for i in range(grid[0]):
            for j in range(grid[1]):
                for k in range(grid[2]):
                    sl = (b, slice(None), slice(2 * i, 2 * i + 2), slice(4 * j, 4 * j + 4), slice(4 * k, 4 * k + 4))
                    src, dst = x[sl].reshape(2, -1), out[sl].reshape(2, -1)
                    if selected[b, n % 12]:
                        assert torch.equal(src[0].sort().values, dst[0].sort().values)  # same multiset
                        assert not torch.equal(src, dst)
                        # channels move together: the voxel order is the same permutation in both
                        perm = [int((src[0] == v).nonzero()) for v in dst[0]]
                        assert torch.equal(dst[1], src[1][perm])
                    else:
                        assert torch.equal(src, dst)
                    n += 1


def test_painting_boxes_inside_and_outside():
    torch.manual_seed(0)
    unit = torch.rand(2, 12, 12, 12)
    noise = torch.rand(2, 12, 12, 12) + 5  # distinguishable from the image
    box = random_box((12, 12, 12), (0.5, 0.5), _gen(3))
    assert all(s.stop - s.start == 6 for s in box)
    keep = box_mask((12, 12, 12), [box])
    out = outpaint(unit, keep, noise)
    assert torch.equal(out[(slice(None), *box)], unit[(slice(None), *box)])  # the inner box is kept
    assert torch.equal(out[:, ~keep], noise[:, ~keep])
    inp = inpaint(unit, keep, noise)
    assert torch.equal(inp[:, keep], noise[:, keep]) and torch.equal(inp[:, ~keep], unit[:, ~keep])
    boxes = paint_boxes((30, 30, 30), (3 / 7, 4 / 7), (1 / 6, 1 / 3), 5, _gen(4))
    assert 1 <= len(boxes) <= 5
    assert all(12 <= s.stop - s.start <= 17 for s in boxes[0])
    assert all(5 <= s.stop - s.start <= 10 and 0 <= s.start and s.stop <= 30 for b in boxes[1:] for s in b)


def test_genesis_corrupt_works_in_the_patch_min_max_frame():
    data = torch.randn(4, 1, 16, 20, 20, generator=_gen(0)) * 2 - 1  # z-scored-like values, not [0, 1]
    before = data.clone()
    none = GenesisSettings.from_dict({"nonlinear_rate": 0, "local_rate": 0, "paint_rate": 0})
    assert torch.allclose(genesis_corrupt(data, none, _gen(1)), data, atol=1e-5)
    every = GenesisSettings.from_dict({"nonlinear_rate": 1, "local_rate": 1, "paint_rate": 1, "shuffle_ratio": 1})
    out = genesis_corrupt(data, every, _gen(1))
    assert torch.equal(data, before)  # the input is not modified
    assert out.shape == data.shape and out.dtype == data.dtype
    lo, hi = data.amin(dim=(1, 2, 3, 4)), data.amax(dim=(1, 2, 3, 4))
    assert torch.all(out.amin(dim=(1, 2, 3, 4)) >= lo - 1e-5) and torch.all(out.amax(dim=(1, 2, 3, 4)) <= hi + 1e-5)
    assert not torch.allclose(out, data, atol=1e-3)
    assert torch.equal(out, genesis_corrupt(data, every, _gen(1)))  # seeded: the same corruption
    # the curve alone is a monotone map of each sample's values onto its own [min, max]
    curve = GenesisSettings.from_dict({"nonlinear_rate": 1, "invert_rate": 0, "local_rate": 0, "paint_rate": 0})
    mapped = genesis_corrupt(data, curve, _gen(2))
    order = data[0].flatten().argsort()
    assert torch.all(mapped[0].flatten()[order].diff() >= -1e-5)
    unit, low, span = unit_range(data)
    assert torch.allclose(unit * span + low, data, atol=1e-5) and unit.min() == 0 and unit.max() == 1


def test_genesis_settings():
    s = GenesisSettings.from_dict(None)
    assert (s.nonlinear_rate, s.local_rate, s.paint_rate, s.inpaint_rate) == (0.9, 0.5, 0.9, 0.2)
    assert s.outpaint_rate == pytest.approx(0.8)
    assert s.shuffle_block_for([32, 40, 40]) == (3, 4, 4)
    assert GenesisSettings.from_dict({"shuffle_block": 2}).shuffle_block_for([8, 8, 8]) == (2, 2, 2)
    with pytest.raises(ValueError, match="does not fit"):
        GenesisSettings.from_dict({"shuffle_block": [2, 2]}).shuffle_block_for([8, 8, 8])
    for name, value in [("paint_rate", 1.5), ("local_rate", "0.5"), ("shuffle_block", [2, -1])]:
        with pytest.raises(ValueError, match=f"ssl_genesis setting '{name}'"):
            GenesisSettings.from_dict({name: value})
