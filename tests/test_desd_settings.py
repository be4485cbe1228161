"""DeSD settings from plans and the command line: every value checked against its field's type."""
import pytest

from nnunet_ssl.cli.main import main
from nnunet_ssl.desd.settings import DeSDSettings


@pytest.mark.parametrize("values, named", [
    ({"out_dim": "abc"}, "out_dim"),
    ({"view_size": 16}, "view_size"),
    ({"view_size": [16, "a", 64]}, "view_size"),
    ({"lr": "fast"}, "lr"),
    ({"use_bn_in_head": "yes"}, "use_bn_in_head"),
    ({"view_sampling": 3}, "view_sampling"),
    ({"symmetry_channel": 1.5}, "symmetry_channel"),
    ({"head_weights": 0.5}, "head_weights"),
    ({"num_epochs": True}, "num_epochs"),
])
def test_wrong_types_name_the_setting(values, named):
    with pytest.raises(ValueError, match=f"SSL setting '{named}'"):
        DeSDSettings.from_dict(values)


def test_values_are_coerced_to_the_field_types():
    s = DeSDSettings.from_dict({"lr": 1, "out_dim": 4096.0, "view_size": [16, 64, 64], "head_weights": [1, 2],
                                "symmetry_channel": None})
    assert s.lr == 1.0 and isinstance(s.lr, float)
    assert s.out_dim == 4096 and isinstance(s.out_dim, int)
    assert s.view_size == (16, 64, 64) and s.head_weights == (1.0, 2.0)
    assert DeSDSettings.from_dict(s.to_dict()) == s  # round trip


def test_plan_command_names_the_bad_setting(tmp_path, monkeypatch, capsys):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, str(tmp_path / k))
    assert main(["plan", "-d", "1", "--ssl", "out_dim=abc"]) == 2
    err = capsys.readouterr().err
    assert "out_dim" in err and "integer" in err and "Traceback" not in err


def test_a_2d_configuration_takes_the_in_plane_part_of_a_view_it_was_not_given(nnunet_env):
    """Without a view_size in its ssl block, DeSD on nnU-Net's ``2d`` uses the default view's in-plane axes;
    a 3D view written into the block is refused naming the setting."""
    import json

    import torch

    from nnunet_ssl.desd.trainer import nnUNetTrainerDeSD

    folder = nnunet_env["root"] / "preprocessed" / "Dataset501_Tiny"
    plans = json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8"))
    dataset_json = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    plans["continue_training"] = False  # nnU-Net's run_training sets it
    plans["configurations"]["2d"]["ssl"] = {"num_epochs": 1}
    trainer = nnUNetTrainerDeSD(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
    assert trainer.ssl_settings.view_size == DeSDSettings().view_size[-2:]
    assert trainer.configuration_manager.patch_size == list(DeSDSettings().view_size[-2:])
    plans["continue_training"] = False
    plans["configurations"]["2d"]["ssl"] = {"view_size": [16, 32, 32]}
    with pytest.raises(ValueError, match="view_size .* has 3 axes but configuration '2d' is 2D"):
        nnUNetTrainerDeSD(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
