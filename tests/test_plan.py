"""nnunet-ssl plan on bad input: existing plans, configurations nnU-Net does not plan, broken datasets."""
import json

import pytest

from conftest import nnunet_environment
from nnunet_ssl.cli.main import main
from readonly import read_only

SMALL = ["--base-features", "4", "--max-features", "16", "--gpu-memory-gb", "0.5", "-np", "1"]


@pytest.fixture
def raw_dataset(tmp_path, monkeypatch):
    from nnunet_ssl.phantom import write_phantom_dataset

    env = nnunet_environment(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    write_phantom_dataset(tmp_path / "raw", 530, "Plan", n_train=3, shape=(24, 32, 32))
    return tmp_path


def test_planning_again_needs_force(raw_dataset, capsys):
    plans = raw_dataset / "preprocessed" / "Dataset530_Plan" / "nnUNetPlans.json"
    assert main(["plan", "-d", "530", *SMALL, "--ssl", "out_dim=64"]) == 0
    assert "nnUNetv2_train 530 3d_fullres all -tr nnUNetTrainerDeSD" in capsys.readouterr().out
    before = plans.read_bytes()
    assert main(["plan", "-d", "530", *SMALL, "--ssl", "out_dim=128"]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err
    assert plans.read_bytes() == before  # the plans and their ssl block are untouched
    assert main(["plan", "-d", "530", *SMALL, "--ssl", "out_dim=128", "--force"]) == 0
    assert json.loads(plans.read_text())["configurations"]["3d_fullres"]["ssl"] == {"out_dim": 128}


def test_configuration_nnunet_does_not_plan_is_refused(raw_dataset, capsys):
    # nnU-Net plans 3d_lowres only for large images: the settings would be dropped and training could not run
    assert main(["plan", "-d", "530", *SMALL, "-c", "3d_lowres", "--ssl", "out_dim=64"]) == 2
    err = capsys.readouterr().err
    assert "planned no 3d_lowres configuration" in err and "3d_fullres" in err and "Pass -c" in err
    assert not (raw_dataset / "preprocessed" / "Dataset530_Plan" / "nnUNetPlans.json").exists()
    # planning 3d_fullres on the same dataset works: test_planning_again_needs_force


def test_integrity_failure_is_nnunets_reason_without_traceback(raw_dataset, capsys):
    (raw_dataset / "raw" / "Dataset530_Plan" / "labelsTr" / "case_001.nii.gz").unlink()
    assert main(["plan", "-d", "530", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "nnU-Net's check of Dataset530_Plan failed" in err and "case_001" in err


def test_unwritable_preprocessed_folder(raw_dataset, capsys):
    with read_only(raw_dataset / "preprocessed"):
        assert main(["plan", "-d", "530", *SMALL]) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err and "Traceback" not in err
