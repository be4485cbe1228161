"""prepare-ssl -> plan -> DeSD -> plan-target: the target gets the SSL encoder's topology and intensity space.

The SSL dataset is made of phantoms of different spacings and orientations; the
target is a lesion dataset with another image size. The DeSD run is the real
``nnUNetv2_train ... -tr nnUNetTrainerDeSD`` with a few iterations. Stock fine-tuning is
checked in-process on the network and split the stock trainer builds; the full
``nnUNetv2_train -pretrained_weights`` command runs in tests/test_end_to_end.py.
"""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import bin_path, nnunet_environment, run_command
from ct_inputs import phantom_images
from nnunet_ssl.cli.main import main

SSL_ID, TARGET_ID = 610, 611
TARGET_SHAPE = (24, 48, 40)
TINY = ["num_epochs=1", "num_iterations_per_epoch=2", "num_val_iterations_per_epoch=1", "batch_size=2",
        "view_size=[16,32,32]", "out_dim=64", "hidden_dim=32", "bottleneck_dim=16", "warmup_epochs=0"]
# (spacing z,y,x, orientation): per-axis medians are 2 mm, so the SSL plans' spacing is 2 mm isotropic
SSL_CASES = [((2.0, 2.0, 2.0), "LPS"), ((2.5, 2.0, 2.0), "RAS"), ((2.0, 1.6, 1.6), "PIR"),
             ((2.0, 2.0, 2.0), "RAS"), ((1.6, 2.0, 2.0), "LPS"), ((2.0, 2.4, 2.4), "ASL")]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from nnunet_ssl.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("plan_target")
    env = nnunet_environment(root)
    for i, (spacing, orientation) in enumerate(SSL_CASES):
        ct, _, _ = phantom_images(spacing, orientation, seed=50 + i)
        folder = root / "inputs" / ("scanner1" if i % 2 else "scanner2")
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(ct, str(folder / f"head{i}.nii.gz"))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert main(["prepare-ssl", "-i", str(root / "inputs" / "scanner1"), str(root / "inputs" / "scanner2"),
                     "-d", str(SSL_ID), "-n", "HeadCT", "--min-brain-ml", "20", "--max-brain-ml", "200",
                     "--no-progress"]) == 0
        assert main(["plan", "-d", str(SSL_ID), "--base-features", "4", "--max-features", "16",
                     "--gpu-memory-gb", "0.5", "-np", "1", "--ssl", *TINY]) == 0
        run_command([bin_path("nnUNetv2_train"), str(SSL_ID), "3d_fullres", "all", "-tr", "nnUNetTrainerDeSD",
                     "-device", "cpu"], env)
        write_phantom_dataset(root / "raw", TARGET_ID, "Stroke", n_train=6, shape=TARGET_SHAPE,
                              spacing=(2.0, 2.0, 2.0), seed=7)
        assert main(["plan-target", "-d", str(TARGET_ID), "--from", str(SSL_ID), "-np", "1"]) == 0
    pre = root / "preprocessed"
    return {
        "root": root, "env": env, "plans_name": "nnUNetPlans_from_Dataset610",
        "ssl_plans": json.loads((pre / "Dataset610_HeadCT" / "nnUNetPlans.json").read_text(encoding="utf-8")),
        "target_plans": json.loads((pre / "Dataset611_Stroke" / "nnUNetPlans_from_Dataset610.json").read_text(encoding="utf-8")),
        "checkpoint": root / "results" / "Dataset610_HeadCT" / "nnUNetTrainerDeSD__nnUNetPlans__3d_fullres"
                      / "fold_all" / "checkpoint_final.pth",
    }


@pytest.fixture
def active(pipeline, monkeypatch):
    for k, v in pipeline["env"].items():
        monkeypatch.setenv(k, v)
    return pipeline


def test_target_plans_keep_encoder_spacing_and_ssl_statistics(pipeline):
    ssl, target = pipeline["ssl_plans"], pipeline["target_plans"]
    s, t = ssl["configurations"]["3d_fullres"], target["configurations"]["3d_fullres"]
    assert list(target["configurations"]) == ["3d_fullres"]
    assert t["architecture"] == s["architecture"]
    assert s["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16, 16]  # --max-features 16
    assert t["spacing"] == s["spacing"] == [2.0, 2.0, 2.0]
    for key in ("normalization_schemes", "use_mask_for_norm", "resampling_fn_data", "preprocessor_name"):
        assert t[key] == s[key]
    assert target["transpose_forward"] == ssl["transpose_forward"]
    assert target["foreground_intensity_properties_per_channel"] == ssl["foreground_intensity_properties_per_channel"]
    assert "ssl" in s and "ssl" not in t
    assert target["ssl_source"]["dataset_name"] == "Dataset610_HeadCT"
    assert target["dataset_name"] == "Dataset611_Stroke" and target["plans_name"] == pipeline["plans_name"]
    assert t["data_identifier"] == "nnUNetPlans_from_Dataset610_3d_fullres"
    # the patch fits the target (24 x 48 x 40 voxels at 2 mm), not the SSL data, and suits the strides
    divisors = np.prod(np.array(s["architecture"]["arch_kwargs"]["strides"]), axis=0)
    assert t["patch_size"] == [24, 48, 40] != s["patch_size"]
    assert all(p % d == 0 for p, d in zip(t["patch_size"], divisors))
    assert t["median_image_size_in_voxels"] == [24.0, 48.0, 40.0]
    assert t["batch_size"] >= 2


def test_stock_nnunet_reads_the_plans(pipeline):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(pipeline["target_plans"])
    cm = pm.get_configuration("3d_fullres")
    assert cm.preprocessor_class.__name__ == "DefaultPreprocessor"
    assert cm.normalization_schemes == ["CTNormalization"]
    assert pm.image_reader_writer_class.__name__ == "SimpleITKIO"


def test_encoder_has_exactly_the_ssl_encoder_names_and_shapes(active):
    from nnunet_ssl.transfer import build_target_network, encoder_state, load_ssl_checkpoint

    net = build_target_network(TARGET_ID, active["plans_name"])
    target = {k: tuple(v.shape) for k, v in net.state_dict().items() if k.startswith("encoder.")}
    ssl = {k: tuple(v.shape) for k, v in encoder_state(load_ssl_checkpoint(active["checkpoint"])).items()}
    assert target == ssl and len(ssl) > 10


def test_preprocessed_intensities_are_ssl_normalised(active):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    pre = active["root"] / "preprocessed" / "Dataset611_Stroke"
    folder = pre / "nnUNetPlans_from_Dataset610_3d_fullres"
    data, _, _, _ = infer_dataset_class(str(folder))(str(folder)).load_case("case_001")
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(active["root"] / "raw" / "Dataset611_Stroke" / "imagesTr"
                                                    / "case_001_0000.nii.gz"))).astype(np.float32)
    p = active["ssl_plans"]["foreground_intensity_properties_per_channel"]["0"]
    expected = (np.clip(raw, p["percentile_00_5"], p["percentile_99_5"]) - p["mean"]) / p["std"]
    assert data.shape == (1, *TARGET_SHAPE)
    np.testing.assert_allclose(np.asarray(data[0]), expected, rtol=1e-5, atol=1e-5)
    # the target's own lesion statistics would have given something else
    own = json.loads((pre / "dataset_fingerprint.json").read_text(encoding="utf-8"))["foreground_intensity_properties_per_channel"]["0"]
    assert abs(own["mean"] - p["mean"]) > 1.0


def test_stock_trainer_loads_the_transferred_checkpoint(active, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ssl.transfer import transfer

    weights = tmp_path / "pretrained.pth"
    transfer(active["checkpoint"], TARGET_ID, weights, plans=active["plans_name"])
    # what `nnUNetv2_train 611 3d_fullres 0 -p <plans> -pretrained_weights <weights>` does before training
    trainer = get_trainer_from_args(str(TARGET_ID), "3d_fullres", 0, "nnUNetTrainer", active["plans_name"],
                                    device=torch.device("cpu"))
    trainer.initialize()
    load_pretrained_weights(trainer.network, str(weights))
    ssl = torch.load(active["checkpoint"], weights_only=False)["network_weights"]
    teacher = {k[len("teacher.encoder."):]: v for k, v in ssl.items() if k.startswith("teacher.encoder.")}
    encoder = trainer.network.encoder.state_dict()
    assert teacher and all(torch.equal(encoder[k], v) for k, v in teacher.items())


def test_stock_trainer_trains_on_our_split(active):
    """Fold 0 of the stock trainer is the split's train/val; the held-out test cases are in neither."""
    from nnunetv2.run.run_training import get_trainer_from_args

    assert main(["split", "-d", str(TARGET_ID), "--no-progress"]) == 0
    pre = active["root"] / "preprocessed" / "Dataset611_Stroke"
    test = json.loads((pre / "splits_test.json").read_text(encoding="utf-8"))["test"]
    trainer = get_trainer_from_args(str(TARGET_ID), "3d_fullres", 0, "nnUNetTrainer", active["plans_name"],
                                    device=torch.device("cpu"))
    train, val = trainer.do_split()
    assert (len(train), len(val), len(test)) == (4, 1, 1)
    assert set(train) | set(val) | set(test) == {f"case_{i:03d}" for i in range(6)}
    assert not set(test) & (set(train) | set(val))


def test_refusals(active, tmp_path, capsys):
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    two = active["root"] / "raw" / "Dataset612_TwoChannels"
    for i in range(2):
        ct, _, lesion = phantom_images(side="left", seed=i)
        (two / "imagesTr").mkdir(parents=True, exist_ok=True)
        (two / "labelsTr").mkdir(parents=True, exist_ok=True)
        for c in range(2):
            sitk.WriteImage(ct, str(two / "imagesTr" / f"c{i}_000{c}.nii.gz"))
        sitk.WriteImage(lesion, str(two / "labelsTr" / f"c{i}.nii.gz"))
    generate_dataset_json(str(two), {0: "CT", 1: "CT2"}, {"background": 0, "lesion": 1}, 2, ".nii.gz")

    assert main(["plan-target", "-d", "612", "--from", str(SSL_ID)]) == 2
    err = capsys.readouterr().err
    assert "the target has 2 input channel(s) ['CT', 'CT2'] but the SSL plans were made for 1 ['CT']" in err
    assert not (active["root"] / "preprocessed" / "Dataset612_TwoChannels").exists()

    assert main(["plan-target", "-d", str(TARGET_ID), "--from", str(SSL_ID), "-p", "nnUNetResEncUNetMPlans"]) == 2
    assert "SSL plans" in (err := capsys.readouterr().err) and "available: nnUNetPlans" in err
    assert main(["plan-target", "-d", str(TARGET_ID), "--from", str(SSL_ID)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["plan-target", "-d", str(TARGET_ID), "--from", str(SSL_ID), "-c", "3d_lowres", "-tp", "X"]) == 2
    assert "configuration '3d_lowres' not in the SSL plans" in capsys.readouterr().err
    assert main(["plan-target", "-d", str(TARGET_ID), "--from", str(TARGET_ID)]) == 2
    assert "are the same" in capsys.readouterr().err


def test_adapt_plans_fits_patch_keeps_parents_and_drops_ssl_blocks():
    """Pure plans arithmetic: a large target shrinks the patch to the SSL budget, divisible by the strides."""
    from nnunet_ssl.target_plans import adapt_plans

    arch = {"network_class_name": "x", "arch_kwargs": {"strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]},
            "_kw_requires_import": []}
    plans = {"transpose_forward": [0, 1, 2], "foreground_intensity_properties_per_channel": {"0": {"mean": 0}},
             "configurations": {
                 "3d_fullres": {"patch_size": [32, 64, 64], "spacing": [2.0, 1.0, 1.0], "batch_size": 2,
                                "architecture": arch, "ssl": {"out_dim": 8}},
                 "3d_ssl": {"inherits_from": "3d_fullres", "ssl": {"out_dim": 16}},
                 "2d": {"patch_size": [64, 64], "spacing": [1.0, 1.0], "batch_size": 12, "architecture": arch}}}
    fingerprint = {"spacings": [[4.0, 1.0, 1.0]] * 4, "shapes_after_crop": [[30, 200, 180]] * 4}
    ssl_stats = {"0": {"mean": 30.0, "std": 9.0}}
    out = adapt_plans(plans, fingerprint, ["3d_ssl"], 4, "Dataset500_A", "nnUNetPlans", ssl_stats)

    assert sorted(out["configurations"]) == ["3d_fullres", "3d_ssl"]
    assert all("ssl" not in c for c in out["configurations"].values()) and "ssl" in plans["configurations"]["3d_ssl"]
    for name in ("3d_fullres", "3d_ssl"):
        c = out["configurations"][name]
        assert c["median_image_size_in_voxels"] == [60.0, 200.0, 180.0]  # 30 slices of 4 mm at 2 mm
        assert [p % d for p, d in zip(c["patch_size"], [4, 8, 8])] == [0, 0, 0]  # products of the strides
        assert np.prod(c["patch_size"]) <= 32 * 64 * 64 and c["batch_size"] >= 2
    assert out["foreground_intensity_properties_per_channel"] == ssl_stats
    assert out["original_median_spacing_after_transp"] == [4.0, 1.0, 1.0]

    small = {"spacings": [[2.0, 1.0, 1.0]] * 4, "shapes_after_crop": [[20, 40, 50]] * 4}
    out = adapt_plans(plans, small, ["3d_fullres"], 4, "Dataset500_A", "nnUNetPlans", ssl_stats)
    assert out["configurations"]["3d_fullres"]["patch_size"] == [20, 40, 56]  # rounded up, not the SSL 32x64x64
