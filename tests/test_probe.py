"""Linear probe on frozen encoders: hand-made encoders whose answer is known, loading, encoders."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_ssl.errors import UserError
from nnunet_ssl.phantom import make_stroke_phantom
from nnunet_ssl.probe import (
    ProbeCase, ProbeMonitor, encoder_from_plans, encoder_from_ssl_checkpoint, linear_probe_auc,
    load_preprocessed_cases, phantom_probe_cases, sample_voxels, voxel_features, window_brain_mask)


def _case(i: int, drop: float = 20.0, side: str = "") -> ProbeCase:
    p = make_stroke_phantom((24, 32, 32), side=side or ("left" if i % 2 else "right"), seed=i, lesion_drop_hu=drop)
    image = ((np.clip(p.image, 0.0, 50.0) - 25.0) / 10.0)[None].astype(np.float32)  # like CT normalisation
    return ProbeCase(f"case_{i}", image, p.lesion, p.brain)


@pytest.fixture(scope="module")
def cases():
    return [_case(i) for i in range(6)]


def identity(x):
    return [x]


def multiscale(x):
    """Stage 0 the image, then stride-2 and stride-4 stages (as an encoder's deeper stages)."""
    return [x, F.avg_pool3d(x, 2), F.avg_pool3d(x, 4)]


def test_intensity_encoder_separates_dark_lesions():
    train, test = [_case(i, drop=40.0) for i in range(4)], [_case(i, drop=40.0) for i in range(4, 6)]
    assert linear_probe_auc(multiscale, train, test) > 0.95


def test_intensity_encoder_at_demo_contrast(cases):
    # 20 HU darker: lesions in white matter are near the CSF of the ventricles, so not perfect
    assert 0.85 < linear_probe_auc(identity, cases[:4], cases[4:]) < 1.0


def test_constant_features_give_exactly_half(cases):
    assert linear_probe_auc(lambda x: [torch.ones(1, 4, *x.shape[2:])], cases[:4], cases[4:]) == 0.5


def test_noise_features_give_about_half(cases):
    g = torch.Generator().manual_seed(0)
    noise = lambda x: [torch.randn(1, 8, *x.shape[2:], generator=g)]  # noqa: E731
    # ~600 held-out voxels: the AUC of an uninformative score has a standard deviation of ~0.025
    assert 0.4 < linear_probe_auc(noise, cases[:4], cases[4:]) < 0.6


def test_same_seed_same_auc_and_sample(cases):
    a = linear_probe_auc(multiscale, cases[:3], cases[3:], voxels_per_class=50, seed=3)
    b = linear_probe_auc(multiscale, cases[:3], cases[3:], voxels_per_class=50, seed=3)
    assert a == b
    v1, y1 = sample_voxels(cases[0], 20, seed=3)
    v2, _ = sample_voxels(cases[0], 20, seed=3)
    v3, _ = sample_voxels(cases[0], 20, seed=4)
    assert np.array_equal(v1, v2) and not np.array_equal(v1, v3)
    # balanced, lesion first, and every voxel of the class it is labelled with
    assert y1.tolist() == [1] * 20 + [0] * 20
    assert cases[0].lesion[tuple(v1[:20].T)].all()
    assert (cases[0].brain & ~cases[0].lesion)[tuple(v1[20:].T)].all()


def test_sample_is_limited_by_the_smaller_class():
    lesion = np.zeros((4, 4, 4), bool)
    lesion[0, 0, :3] = True
    case = ProbeCase("c", np.zeros((1, 4, 4, 4), np.float32), lesion, np.ones((4, 4, 4), bool))
    voxels, labels = sample_voxels(case, 100, seed=0)
    assert len(voxels) == 6 and labels.sum() == 3
    assert len(np.unique(voxels, axis=0)) == 6  # without replacement


def test_strided_stages_are_upsampled_to_the_input_grid():
    # a ramp along x: average pooling then trilinear upsampling (align_corners=False) gives the ramp back
    # exactly away from the border, for stride 2 and stride 4
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32), (1, 8, 8, 16)).copy()
    voxels = np.array([[z, y, x] for z in range(8) for y in range(8) for x in range(2, 14)])
    feats = voxel_features(multiscale, ramp, voxels)
    assert feats.shape == (len(voxels), 3)
    assert np.allclose(feats, voxels[:, 2:3].astype(np.float32), atol=1e-5)
    # at the border the upsampled coarse stage clamps: a difference proves it was upsampled, not copied
    edge = voxel_features(multiscale, ramp, np.array([[0, 0, 0]]))
    assert edge[0, 0] == 0.0 and edge[0, 2] > 0.5


def test_odd_sizes_and_channel_pooling():
    img = np.random.default_rng(0).standard_normal((2, 9, 11, 13)).astype(np.float32)
    enc = lambda x: [x, F.conv3d(x, torch.ones(6, 2, 3, 3, 3), stride=2)]  # noqa: E731 stride 2 of an odd grid
    voxels = np.array([[0, 0, 0], [8, 10, 12], [4, 5, 6]])
    assert voxel_features(enc, img, voxels).shape == (3, 8)
    pooled = voxel_features(enc, img, voxels, channels_per_stage=2)
    assert pooled.shape == (3, 4)
    assert np.allclose(pooled[:, :2], img[:, voxels[:, 0], voxels[:, 1], voxels[:, 2]].T)


def test_stages_select_outputs_by_index():
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32), (1, 8, 8, 16)).copy()
    voxels = np.array([[0, 0, 0], [4, 4, 8]])
    every = voxel_features(multiscale, ramp, voxels)
    assert np.array_equal(voxel_features(multiscale, ramp, voxels, stages=[-1]), every[:, 2:3])
    assert np.array_equal(voxel_features(multiscale, ramp, voxels, stages=[0, 2]), every[:, [0, 2]])
    with pytest.raises(UserError, match="3 stage outputs"):
        voxel_features(multiscale, ramp, voxels, stages=[3])
    with pytest.raises(UserError, match="empty"):
        voxel_features(multiscale, ramp, voxels, stages=[])


def test_probe_on_a_stage_that_carries_nothing_is_half(cases):
    # stage 0 is the image (separates lesions), stage 1 a constant: the probe of stage 1 alone knows nothing
    enc = lambda x: [x, torch.zeros_like(x)]  # noqa: E731
    assert linear_probe_auc(enc, cases[:4], cases[4:], stages=[0]) > 0.9
    assert linear_probe_auc(enc, cases[:4], cases[4:], stages=[-1]) == 0.5
    monitor = ProbeMonitor.from_cases(cases[:4], cases[4:], stages=[-1])
    assert monitor.score(enc) == 0.5
    with pytest.raises(UserError, match="held-out"):
        ProbeMonitor.from_cases(cases[:4], [])


def test_nnunet_encoder_frozen_and_mode_restored(tiny_unet):
    encoder = tiny_unet.encoder
    encoder.train()
    img = np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32)
    feats = voxel_features(encoder, img, np.array([[1, 2, 3], [7, 15, 15]]))
    assert feats.shape == (2, 4 + 8 + 16)  # every stage's channels
    assert encoder.training
    assert all(p.grad is None for p in encoder.parameters())


def test_case_without_lesion_is_a_clear_error(cases):
    healthy = _case(3, side="none")
    with pytest.raises(UserError, match="case_3 has no lesion voxels"):
        linear_probe_auc(identity, [cases[0], healthy], cases[4:])


def test_overlapping_train_and_test_cases_refused(cases):
    with pytest.raises(UserError, match="both training and held-out"):
        linear_probe_auc(identity, cases[:3], cases[2:])


def test_mask_shape_checked():
    with pytest.raises(UserError, match="lesion mask shape"):
        ProbeCase("c", np.zeros((1, 4, 4, 4), np.float32), np.zeros((4, 4, 3), bool), np.zeros((4, 4, 4), bool))


def test_window_brain_mask():
    x = np.array([[[[-2.0, -2.0, 0.1, 0.5, 3.0]]]], np.float32)
    assert window_brain_mask(x).tolist() == [[[False, False, True, True, False]]]


# ---------------------------------------------------------------- nnU-Net folders
def _preprocessed_folder(root: Path) -> Path:
    base = root / "preprocessed" / "Dataset501_Tiny"
    return next(p for p in base.iterdir() if p.is_dir() and p.name.endswith("3d_fullres"))


def test_load_preprocessed_cases(nnunet_env):
    import SimpleITK as sitk

    root = nnunet_env["root"]
    cases = load_preprocessed_cases(_preprocessed_folder(root))
    assert [c.identifier for c in cases] == [f"case_{i:03d}" for i in range(6)]
    for case in cases:
        raw = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "raw" / "Dataset501_Tiny" / "labelsTr" /
                                                        f"{case.identifier}.nii.gz")))
        assert case.image.dtype == np.float32 and case.image.shape == (1, *raw.shape)
        assert case.lesion.sum() == (raw > 0).sum()
        # the unclipped window holds the brain: every lesion voxel, and not the air or skull
        if case.lesion.any():
            assert case.brain[case.lesion].mean() > 0.97
        assert 0.1 < case.brain.mean() < 0.6
    folder = _preprocessed_folder(root)
    one = load_preprocessed_cases(folder, identifiers=["case_001"], brain_folder=folder)
    assert np.array_equal(one[0].brain, one[0].lesion)  # brain taken from the other folder's labels
    with pytest.raises(UserError, match="not in"):
        load_preprocessed_cases(_preprocessed_folder(root), identifiers=["case_999"])


def test_phantom_probe_cases_are_what_nnunet_preprocessing_writes(nnunet_env):
    # seed 0's cases 0 and 1 are the dataset's case_000 (left lesion) and case_001 (right lesion)
    root = nnunet_env["root"]
    plans = root / "preprocessed" / "Dataset501_Tiny" / "nnUNetPlans.json"
    made = phantom_probe_cases(plans, 2, (32, 40, 40), lesion_drop_hu=8.0, seed=0)
    written = load_preprocessed_cases(_preprocessed_folder(root), identifiers=["case_000", "case_001"])
    for m, w in zip(made, written):
        assert m.image.shape == w.image.shape
        assert np.allclose(m.image, w.image, atol=1e-5)
        assert np.array_equal(m.lesion, w.lesion)
        assert m.lesion.any() and m.brain[m.lesion].all()  # the lesion lies in the brain
    other = phantom_probe_cases(plans, 2, (32, 40, 40), lesion_drop_hu=8.0, seed=1)
    assert not np.allclose(other[0].image, made[0].image)
    with pytest.raises(UserError, match="does not exist"):
        phantom_probe_cases(root / "nope.json", 2, (32, 40, 40), 8.0)


def test_encoder_from_plans_is_seeded(nnunet_env):
    plans = nnunet_env["root"] / "preprocessed" / "Dataset501_Tiny" / "nnUNetPlans.json"
    state = torch.random.get_rng_state()
    a, b, c = (encoder_from_plans(plans, seed=s) for s in (1, 1, 2))
    assert torch.equal(torch.random.get_rng_state(), state)  # global random state untouched
    sa, sb, sc = (e.state_dict() for e in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point() and sa[k].numel() > 1)
    assert a.return_skips and not a.training


def test_encoder_from_ssl_checkpoint_round_trip(nnunet_env, tmp_path):
    import json

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ssl.checkpoint import ssl_metadata

    plans_file = nnunet_env["root"] / "preprocessed" / "Dataset501_Tiny" / "nnUNetPlans.json"
    cm = PlansManager(json.loads(plans_file.read_text())).get_configuration("3d_fullres")
    teacher, student = encoder_from_plans(plans_file, seed=1), encoder_from_plans(plans_file, seed=2)
    weights = {**{f"teacher.encoder.{k}": v for k, v in teacher.state_dict().items()},
               **{f"student.encoder.{k}": v for k, v in student.state_dict().items()}}
    path = tmp_path / "ssl.pth"
    torch.save({"network_weights": weights,
                "ssl": ssl_metadata({}, cm, 1, "Dataset501_Tiny", "nnUNetPlans", "3d_fullres")}, path)
    for source, expected in (("teacher", teacher), ("student", student)):
        loaded = encoder_from_ssl_checkpoint(path, source).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in expected.state_dict().items())
    with pytest.raises(UserError, match="does not exist"):
        encoder_from_ssl_checkpoint(tmp_path / "none.pth")
