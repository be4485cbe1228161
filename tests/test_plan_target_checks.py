"""plan-target on bad input and interruptions; the batch cap of the SSL plans' planner."""
import json

import pytest

from nnunet_ssl.cli.main import main
from nnunet_ssl.errors import UserError
from readonly import read_only


def test_batch_cap_is_the_ssl_planners(nnunet_env):
    from nnunet_ssl.target_plans import adapt_plans, planner_max_dataset_covered

    # the residual-encoder presets let a batch cover the whole dataset, nnU-Net's default planner 5 %
    assert planner_max_dataset_covered("nnUNetPlannerResEncM", "Dataset501_Tiny") == 1.0
    assert planner_max_dataset_covered("nnUNetPlannerResEncL", "Dataset501_Tiny") == 1.0
    assert planner_max_dataset_covered("ExperimentPlanner", "Dataset501_Tiny") == 0.05
    arch = {"network_class_name": "x", "arch_kwargs": {"strides": [[1, 1, 1], [2, 2, 2]]}, "_kw_requires_import": []}
    plans = {"transpose_forward": [0, 1, 2], "foreground_intensity_properties_per_channel": {},
             "configurations": {"3d_fullres": {"patch_size": [16, 32, 32], "spacing": [1.0, 1.0, 1.0],
                                               "batch_size": 8, "architecture": arch}}}
    fingerprint = {"spacings": [[1.0, 1.0, 1.0]] * 4, "shapes_after_crop": [[16, 32, 32]] * 4}

    def batch(cap):
        out = adapt_plans(plans, fingerprint, ["3d_fullres"], 4, "Dataset500_A", "P", {}, max_dataset_covered=cap)
        return out["configurations"]["3d_fullres"]["batch_size"], out["ssl_source"]["max_dataset_covered"]

    # 4 cases of one patch each: 5 % of them rounds to 0 patches -> the minimum 2; 100 % -> 4 (under the SSL 8)
    assert batch(0.05) == (2, 0.05)
    assert batch(1.0) == (4, 1.0)


@pytest.fixture
def target(nnunet_env):
    from nnunet_ssl.phantom import write_phantom_dataset

    write_phantom_dataset(nnunet_env["root"] / "raw", 531, "Target", n_train=3, shape=(24, 32, 32), seed=3)
    return nnunet_env


def test_interrupted_plan_target_is_recognised_and_resumed(target, tmp_path, monkeypatch, capsys):
    import nnunetv2.experiment_planning.plan_and_preprocess_api as api

    from test_transfer_checks import _checkpoint
    from nnunet_ssl.transfer import transfer

    real = api.preprocess_dataset

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "preprocess_dataset", interrupted)
    assert main(["plan-target", "-d", "531", "--from", "501", "-np", "1"]) == 130
    plans_file = target["root"] / "preprocessed" / "Dataset531_Target" / "nnUNetPlans_from_Dataset501.json"
    assert json.loads(plans_file.read_text())["ssl_source"]["complete"] is False
    ssl = _checkpoint(target, tmp_path / "ssl.pth")
    with pytest.raises(UserError, match="incomplete.*rerun `nnunet-ssl plan-target -d Dataset531_Target"):
        transfer(ssl, 531, tmp_path / "w.pth", plans="nnUNetPlans_from_Dataset501")

    monkeypatch.setattr(api, "preprocess_dataset", real)
    capsys.readouterr()
    assert main(["plan-target", "-d", "531", "--from", "501", "-np", "1"]) == 0  # resumes, no --force needed
    assert "Resuming" in capsys.readouterr().out
    assert json.loads(plans_file.read_text())["ssl_source"]["complete"] is True
    transfer(ssl, 531, tmp_path / "w.pth", plans="nnUNetPlans_from_Dataset501")
    # finished plans are protected again
    assert main(["plan-target", "-d", "531", "--from", "501", "-np", "1"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err


def test_integrity_failure_and_unwritable_folder(target, capsys):
    label = target["root"] / "raw" / "Dataset531_Target" / "labelsTr" / "case_001.nii.gz"
    saved = label.read_bytes()
    label.unlink()
    try:
        assert main(["plan-target", "-d", "531", "--from", "501", "-tp", "Broken"]) == 2
        err = capsys.readouterr().err
        assert "nnU-Net's check of Dataset531_Target failed" in err and "case_001" in err
    finally:
        label.write_bytes(saved)
    folder = target["root"] / "preprocessed" / "Dataset531_Target"
    folder.mkdir(parents=True, exist_ok=True)
    with read_only(folder):
        assert main(["plan-target", "-d", "531", "--from", "501", "-tp", "Locked"]) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err and "Traceback" not in err
