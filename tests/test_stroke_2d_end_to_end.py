"""The two multi-input stroke tasks end to end on phantoms, with real nnU-Net commands:

write the dataset (2-channel CTA + NCCT clots, 5-channel CT perfusion with region labels) ->
nnU-Net's planning (its integrity check first) of the ``2d`` configuration -> DeSD pretraining on
slices (``nnUNetv2_train ... 2d all -tr nnUNetTrainerDeSD``) -> ``nnunet-ssl-transfer -c 2d`` ->
stock ``nnUNetv2_train ... 2d 0 -pretrained_weights`` with a short focal Tversky trainer.
"""
import json
import os

import pytest
import torch

from conftest import TINY_SSL, bin_path, nnunet_environment, run_command, write_short_focal_tversky
from nnunet_ssl.phantom import write_clot_phantom_inputs, write_ctp_phantom_inputs

pytestmark = pytest.mark.slow

TASKS = {"clot": (620, "Dataset620_Clot", write_clot_phantom_inputs, ["clot-dataset"], 2),
         "ctp": (640, "Dataset640_CTP", write_ctp_phantom_inputs, ["ctp-dataset", "--regions"], 5)}


@pytest.mark.parametrize("task", list(TASKS))
def test_dataset_2d_desd_pretraining_transfer_and_focal_tversky_finetuning(task, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunet_ssl.cli.main import main
    from nnunet_ssl.planning import plan_and_preprocess
    from nnunet_ssl.transfer import build_target_network

    dataset_id, name, write_inputs, command, n_channels = TASKS[task]
    root = tmp_path / "nnunet"
    env = nnunet_environment(root)
    presets = tmp_path / "presets"
    presets.mkdir()
    write_short_focal_tversky(presets)
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(presets)])
    write_inputs(tmp_path / "inputs")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert main([command[0], str(tmp_path / "inputs"), str(root / "raw" / name), "--no-progress",
                     *command[1:]]) == 0
        # nnU-Net's integrity check runs first; 2D only; the 3D view of the ssl block becomes a 2D one
        plan_and_preprocess(dataset_id, base_features=8, gpu_memory_gb=0.5, configurations=("2d",),
                            ssl_settings={**TINY_SSL, "batch_size": 4, "num_epochs": 1}, num_processes=1)
    plans = json.loads((root / "preprocessed" / name / "nnUNetPlans.json").read_text(encoding="utf-8"))
    assert plans["configurations"]["2d"]["ssl"]["view_size"] == TINY_SSL["view_size"][-2:]
    dataset_json = json.loads((root / "raw" / name / "dataset.json").read_text(encoding="utf-8"))
    assert len(dataset_json["channel_names"]) == n_channels

    run_command([bin_path("nnUNetv2_train"), str(dataset_id), "2d", "all", "-tr", "nnUNetTrainerDeSD",
                 "-device", "cpu"], env)
    ssl_out = root / "results" / name / "nnUNetTrainerDeSD__nnUNetPlans__2d" / "fold_all"
    log = next(ssl_out.glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert "view size [32, 32]" in log and "train_loss" in log
    checkpoint = torch.load(ssl_out / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    first = next(v for k, v in checkpoint["network_weights"].items() if k.startswith("teacher.encoder.")
                 and v.ndim > 1)
    assert first.ndim == 4 and first.shape[1] == n_channels  # 2D kernels over every input channel

    weights = tmp_path / "pretrained.pth"
    run_command([bin_path("nnunet-ssl-transfer"), str(ssl_out / "checkpoint_final.pth"), "-d", str(dataset_id),
                 "-c", "2d", "-o", str(weights)], env)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        net = build_target_network(dataset_id, configuration="2d")
    load_pretrained_weights(net, str(weights))  # what -pretrained_weights does first: the teacher's encoder
    teacher = {k[len("teacher.encoder."):]: v for k, v in checkpoint["network_weights"].items()
               if k.startswith("teacher.encoder.")}
    assert teacher and all(torch.equal(net.encoder.state_dict()[k], v) for k, v in teacher.items())

    proc = run_command([bin_path("nnUNetv2_train"), str(dataset_id), "2d", "0", "-tr", "nnUNetTrainerFocalTversky_Demo",
                        "-pretrained_weights", str(weights), "-device", "cpu"], env)
    assert "Loading pretrained weights from file" in proc.stdout
    tuned = root / "results" / name / "nnUNetTrainerFocalTversky_Demo__nnUNetPlans__2d" / "fold_0"
    ft_log = next(tuned.glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert "focal Tversky loss alpha=0.7 (false negatives), beta=0.3 (false positives), gamma=0.75" in ft_log
    losses = [float(line.split()[-1]) for line in ft_log.splitlines() if "train_loss" in line]
    assert len(losses) == 1 and 0 < losses[0] <= 1  # (1 - TI) ** gamma lies in [0, 1]
    assert "val_loss" in ft_log and "final validation skipped" in ft_log
    # clot: background and clot; CT perfusion: nnU-Net's region-based training, one sigmoid output per
    # region (hypoperfused, core) instead of three softmax classes
    tuned_checkpoint = torch.load(tuned / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    tuned_weights = tuned_checkpoint["network_weights"]
    seg_layers = sorted(k for k in tuned_weights if k.startswith("decoder.seg_layers.") and k.endswith(".weight"))
    assert tuned_weights[seg_layers[-1]].shape[0] == 2
    assert tuned_checkpoint["trainer_name"] == "nnUNetTrainerFocalTversky_Demo"
