"""The whole path with real nnU-Net commands in subprocesses, on a tiny phantom dataset:

plan -> nnUNetv2_train -tr nnUNetTrainerDeSD -> nnunet-ssl-transfer -> stock nnUNetv2_train
-pretrained_weights -> nnUNetv2_predict.
"""
import json

import SimpleITK as sitk
import numpy as np
import pytest
import torch

from conftest import bin_path, run_command

pytestmark = pytest.mark.slow


def test_pretrain_transfer_finetune_predict(ssl_run, nnunet_env, tmp_path):
    env = ssl_run["env"]
    root = ssl_run["root"]
    # the SSL run wrote nnU-Net's layout with our progress plot and no segmentation validation
    out = ssl_run["output"]
    assert {"checkpoint_final.pth", "checkpoint_best.pth", "progress.png"} <= {p.name for p in out.iterdir()}
    log = next(out.glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert '"num_iterations_per_epoch": 3' in log and "nnUNetTrainerDeSD pretraining: no segmentation validation" in log

    weights = tmp_path / "pretrained.pth"
    run_command([bin_path("nnunet-ssl-transfer"), str(ssl_run["checkpoint"]), "-d", "501", "-o", str(weights)], env)

    # the encoder nnU-Net's own loader puts into the stock network is the SSL teacher's
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunet_ssl.transfer import build_target_network

    net = build_target_network(501)
    load_pretrained_weights(net, str(weights))
    ssl = torch.load(ssl_run["checkpoint"], weights_only=False)["network_weights"]
    teacher = {k[len("teacher.encoder."):]: v for k, v in ssl.items() if k.startswith("teacher.encoder.")}
    assert teacher and all(torch.equal(net.encoder.state_dict()[k], v) for k, v in teacher.items())

    # stock fine-tuning, 1 epoch of 5 iterations (nnUNetTrainerBudget reads the run length from a
    # copy of the plans; the shared plans stay as they are), then nnU-Net's own final validation
    folder = root / "preprocessed" / "Dataset501_Tiny"
    plans = json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8"))
    plans["plans_name"] = "nnUNetPlans_e2e"
    plans["configurations"]["3d_fullres"]["budget"] = {"num_epochs": 1, "num_iterations_per_epoch": 5,
                                                       "num_val_iterations_per_epoch": 2}
    (folder / "nnUNetPlans_e2e.json").write_text(json.dumps(plans), encoding="utf-8")
    run_command([bin_path("nnUNetv2_train"), "501", "3d_fullres", "0", "-tr", "nnUNetTrainerBudget",
                 "-p", "nnUNetPlans_e2e", "-pretrained_weights", str(weights), "-device", "cpu"], env)
    tuned = root / "results" / "Dataset501_Tiny" / "nnUNetTrainerBudget__nnUNetPlans_e2e__3d_fullres" / "fold_0"
    ft_log = next(tuned.glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert "Epoch 0" in ft_log and "Epoch 1" not in ft_log
    assert (tuned / "validation" / "summary.json").is_file()

    images = root / "raw" / "Dataset501_Tiny" / "imagesTs"
    pred = tmp_path / "pred"
    run_command([bin_path("nnUNetv2_predict"), "-i", str(images), "-o", str(pred), "-d", "501",
                 "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainerBudget", "-p", "nnUNetPlans_e2e",
                 "-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    inputs = sorted(images.glob("*_0000.nii.gz"))
    assert len(inputs) == 2
    for image_file in inputs:
        image = sitk.ReadImage(str(image_file))
        seg = sitk.ReadImage(str(pred / image_file.name.replace("_0000.nii.gz", ".nii.gz")))
        assert seg.GetSize() == image.GetSize()
        assert np.allclose(seg.GetSpacing(), image.GetSpacing())
        assert np.allclose(seg.GetOrigin(), image.GetOrigin())
        assert np.allclose(seg.GetDirection(), image.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1}
