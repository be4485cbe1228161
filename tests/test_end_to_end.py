"""The whole path with real nnU-Net commands in subprocesses, on a tiny phantom dataset:

plan -> nnUNetv2_train -tr nnUNetTrainerDeSD -> nnunet-ssl-transfer -> stock nnUNetv2_train
-pretrained_weights -> nnUNetv2_predict.
"""
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
    assert '"num_iterations_per_epoch": 3' in log and "SSL pretraining: no segmentation validation" in log

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

    run_command([bin_path("nnUNetv2_train"), "501", "3d_fullres", "0", "-tr", "nnUNetTrainer_1epoch",
                 "-pretrained_weights", str(weights), "-device", "cpu"], env)
    ft_log = next((root / "results" / "Dataset501_Tiny" / "nnUNetTrainer_1epoch__nnUNetPlans__3d_fullres"
                   / "fold_0").glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert "Epoch 0" in ft_log

    images = root / "raw" / "Dataset501_Tiny" / "imagesTs"
    pred = tmp_path / "pred"
    run_command([bin_path("nnUNetv2_predict"), "-i", str(images), "-o", str(pred), "-d", "501",
                 "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainer_1epoch", "-chk", "checkpoint_final.pth",
                 "-device", "cpu", "-npp", "1", "-nps", "1"], env)
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
