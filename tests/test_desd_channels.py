"""Symmetry augmentation and two-channel input, through the real training command."""
import json

import pytest
import torch

from conftest import TINY_SSL, bin_path, run_command
from nnunet_ssl.errors import UserError
from nnunet_ssl.transfer import transfer

pytestmark = pytest.mark.slow


def _ssl_checkpoint(root, configuration, trainer):
    return (root / "results" / "Dataset502_TwoChannel" / f"{trainer}__nnUNetPlans__{configuration}"
            / "fold_all" / "checkpoint_final.pth")


def test_symmetry_and_two_channel_pretraining_and_transfer(planned_two_channel, planned, tmp_path, monkeypatch):
    root, env = planned_two_channel["root"], planned_two_channel["env"]
    plans_file = root / "preprocessed" / "Dataset502_TwoChannel" / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    plans["configurations"]["3d_two"] = {"inherits_from": "3d_fullres", "ssl": dict(TINY_SSL)}
    plans_file.write_text(json.dumps(plans), encoding="utf-8")

    run_command([bin_path("nnUNetv2_train"), "502", "3d_fullres", "all", "-tr", "nnUNetTrainerDeSD_SA",
                 "-device", "cpu"], env)
    run_command([bin_path("nnUNetv2_train"), "502", "3d_two", "all", "-tr", "nnUNetTrainerDeSD", "-device", "cpu"], env)

    sa = torch.load(_ssl_checkpoint(root, "3d_fullres", "nnUNetTrainerDeSD_SA"), weights_only=False)
    two = torch.load(_ssl_checkpoint(root, "3d_two", "nnUNetTrainerDeSD"), weights_only=False)
    first = "teacher.encoder.stages.0.0.convs.0.conv.weight"
    assert sa["ssl"]["settings"]["symmetry_channel"] == 1 and sa["ssl"]["num_input_channels"] == 1
    assert sa["network_weights"][first].shape[1] == 1  # the encoder sees the CT channel only
    assert two["ssl"]["num_input_channels"] == 2 and two["network_weights"][first].shape[1] == 2

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # two-channel encoder into the two-channel target network
    report = transfer(_ssl_checkpoint(root, "3d_two", "nnUNetTrainerDeSD"), 502, tmp_path / "two.pth")
    assert report.n_encoder_tensors > 0
    # the one-channel (symmetry) encoder does not fit a two-channel network: a clear refusal
    with pytest.raises(UserError, match=r"input channels differ .* SSL checkpoint 1, target network 2"):
        transfer(_ssl_checkpoint(root, "3d_fullres", "nnUNetTrainerDeSD_SA"), 502, tmp_path / "sa.pth")
    # but it fits the one-channel dataset planned with the same topology
    for k, v in planned["env"].items():
        monkeypatch.setenv(k, v)
    transfer(_ssl_checkpoint(root, "3d_fullres", "nnUNetTrainerDeSD_SA"), 501, tmp_path / "sa1.pth")
    log = next(_ssl_checkpoint(root, "3d_fullres", "nnUNetTrainerDeSD_SA").parent.glob("training_log_*")).read_text(encoding="utf-8")
    assert "RankMe embedding" in log and "KL(teacher||student)" in log
