"""SSL pretraining under torchrun itself: 2 gloo processes on the CPU.

1. One DeSD step and RankMe on a fixed global batch: centre, loss, the student after the step and RankMe
   equal what one process computes on the whole batch.
2. ``torchrun -m nnunet_ssl.cli.main pretrain`` trains DeSD and a pretext method on the tiny dataset,
   rank 0 writing nnU-Net's outputs.
"""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import bin_path, run_command

WORKER = Path(__file__).with_name("torchrun_desd_worker.py")


def _torchrun(args, env, nproc=2):
    return run_command([bin_path("torchrun"), "--standalone", f"--nproc-per-node={nproc}", *args], env)


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
                PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))


def test_desd_step_centre_and_rankme_under_torchrun_equal_one_process(tmp_path):
    single, double = tmp_path / "one", tmp_path / "two"
    single.mkdir(), double.mkdir()
    run_command([sys.executable, str(WORKER), str(single)], _env())
    _torchrun([str(WORKER), str(double)], _env())
    want = torch.load(single / "rank_0.pt", weights_only=False)
    for rank in range(2):
        got = torch.load(double / f"rank_{rank}.pt", weights_only=False)
        assert got["world"] == 2 and want["world"] == 1
        torch.testing.assert_close(got["loss"], want["loss"])
        torch.testing.assert_close(got["center"], want["center"])
        for name, value in want["student"].items():  # DDP's averaged gradient is the whole batch's
            torch.testing.assert_close(got["student"][name], value, msg=name)
        assert got["rankme"] == pytest.approx(want["rankme"], rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("trainer, block", [("nnUNetTrainerDeSD", None), ("nnUNetTrainerMAE", "ssl_mae")])
def test_pretrain_command_under_torchrun(trainer, block, nnunet_env, tmp_path):
    root = nnunet_env["root"]
    folder = root / "preprocessed" / "Dataset501_Tiny"
    plans = json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8"))
    plans["plans_name"] = "nnUNetPlans_torchrun"
    cfg = plans["configurations"]["3d_fullres"]
    if block:
        cfg[block] = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}
    else:
        cfg["ssl"] = {**cfg["ssl"], "num_epochs": 1}
    (folder / "nnUNetPlans_torchrun.json").write_text(json.dumps(plans), encoding="utf-8")
    env = dict(nnunet_env["env"], nnUNet_results=str(tmp_path / "results"), OMP_NUM_THREADS="1")
    proc = _torchrun(["-m", "nnunet_ssl.cli.main", "pretrain", "501", "3d_fullres", "all", "-tr", trainer,
                      "-p", "nnUNetPlans_torchrun", "-device", "cpu"], env)
    out = tmp_path / "results" / "Dataset501_Tiny" / f"{trainer}__nnUNetPlans_torchrun__3d_fullres" / "fold_all"
    assert (out / "checkpoint_final.pth").is_file() and (out / "progress.png").is_file()
    logs = list(out.glob("training_log_*.txt"))
    assert len(logs) == 1  # rank 0 alone writes
    assert "world size is 2" in proc.stdout.lower().replace("  ", " ")
    saved = torch.load(out / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert not any(k.startswith("module.") for k in saved["network_weights"])  # stored without the DDP wrapper
