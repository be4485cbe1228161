"""nnunet-ssl-transfer refusals that shapes alone cannot catch, on SSL checkpoints made without training.

The checkpoints hold the target network's own encoder (as teacher and student) and an ``ssl`` entry
whose recorded architecture the tests change, as if pretrained on other plans.
"""
import copy
import json

import pytest
import torch

from nnunet_ssl.checkpoint import ssl_metadata
from nnunet_ssl.cli.transfer import main as transfer_main
from nnunet_ssl.desd.settings import DeSDSettings
from nnunet_ssl.errors import UserError
from nnunet_ssl.transfer import build_target_network, transfer
from readonly import read_only


def _checkpoint(env, path, **arch_changes):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((env["root"] / "preprocessed" / "Dataset501_Tiny" / "nnUNetPlans.json").read_text())
    cm = PlansManager(plans).get_configuration("3d_fullres")
    meta = copy.deepcopy(ssl_metadata(DeSDSettings().to_dict(), cm, 1, "Dataset501_Tiny", "nnUNetPlans",
                                      "3d_fullres"))
    meta["architecture"]["arch_kwargs"].update(arch_changes)
    encoder = {k[len("encoder."):]: v for k, v in build_target_network(501).state_dict().items()
               if k.startswith("encoder.")}
    weights = {f"{who}.encoder.{k}": v for who in ("teacher", "student") for k, v in encoder.items()}
    torch.save({"network_weights": weights, "ssl": meta}, path)
    return path


def test_matching_architecture_transfers(nnunet_env, tmp_path):
    report = transfer(_checkpoint(nnunet_env, tmp_path / "ssl.pth"), 501, tmp_path / "w.pth")
    assert report.n_encoder_tensors > 0 and (tmp_path / "w.pth").is_file()


@pytest.mark.parametrize("setting, value", [
    ("strides", [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]),
    ("nonlin", "torch.nn.ReLU"),
    ("norm_op", "torch.nn.modules.batchnorm.BatchNorm3d"),
])
def test_other_architecture_settings_are_refused_unless_allowed(nnunet_env, tmp_path, capsys, setting, value):
    ssl = _checkpoint(nnunet_env, tmp_path / "ssl.pth", **{setting: value})
    out = tmp_path / "w.pth"
    with pytest.raises(UserError, match=f"{setting} differ"):
        transfer(ssl, 501, out)
    assert transfer_main([str(ssl), "-d", "501", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{setting} differ" in err and f"--allow-architecture-difference {setting}" in err
    assert not out.exists()
    assert transfer_main([str(ssl), "-d", "501", "-o", str(out), "--allow-architecture-difference", setting]) == 0
    assert out.is_file()


def test_output_equal_to_the_checkpoint_is_refused_even_with_force(nnunet_env, tmp_path, capsys):
    ssl = _checkpoint(nnunet_env, tmp_path / "ssl.pth")
    before = ssl.read_bytes()
    (tmp_path / "sub").mkdir()
    for spelling in (ssl, tmp_path / "sub" / ".." / "ssl.pth"):
        assert transfer_main([str(ssl), "-d", "501", "-o", str(spelling), "--force"]) == 2
        assert "is the SSL checkpoint" in capsys.readouterr().err
    (tmp_path / "link.pth").symlink_to(ssl)
    assert transfer_main([str(ssl), "-d", "501", "-o", str(tmp_path / "link.pth"), "--force"]) == 2
    assert ssl.read_bytes() == before


def test_output_that_is_a_folder_or_unwritable(nnunet_env, tmp_path, capsys):
    ssl = _checkpoint(nnunet_env, tmp_path / "ssl.pth")
    for flags in ([], ["--force"]):
        assert transfer_main([str(ssl), "-d", "501", "-o", str(tmp_path), *flags]) == 2
        assert "is a folder" in capsys.readouterr().err
    with read_only(tmp_path / "locked") as locked:
        assert transfer_main([str(ssl), "-d", "501", "-o", str(locked / "w.pth")]) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err and "Traceback" not in err


def test_command_offers_exactly_the_checked_settings():
    from nnunet_ssl.cli import transfer as cli
    from nnunet_ssl import transfer as library

    assert cli.ARCHITECTURE_SETTINGS == library.ARCHITECTURE_SETTINGS


def _stock_checkpoint(env, path, n_labels=21, **arch_changes):
    """A stock nnU-Net checkpoint (as nnUNetTrainer saves it) of a network with ``n_labels`` outputs."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((env["root"] / "preprocessed" / "Dataset501_Tiny" / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = "Dataset511_Zones"
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(arch_changes)
    pm = PlansManager(plans)
    torch.manual_seed(1)
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, n_labels, True)
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer", "current_epoch": 1,
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": {}}}, path)
    return net


def test_stock_nnunet_checkpoint_gives_its_encoder_to_a_target_with_other_labels(nnunet_env, tmp_path):
    source = _stock_checkpoint(nnunet_env, tmp_path / "zones.pth")
    assert transfer_main([str(tmp_path / "zones.pth"), "-d", "501", "-o", str(tmp_path / "w.pth")]) == 0
    saved = torch.load(tmp_path / "w.pth", weights_only=False)
    weights, meta = saved["network_weights"], saved["nnunet_ssl_transfer"]
    assert meta["source"] == "encoder" and meta["source_format"] == "nnunet:nnUNetTrainer"
    assert meta["ssl_dataset"] == "Dataset511_Zones"
    pretrained = source.state_dict()
    encoder = [k for k in weights if k.startswith("encoder.")]
    assert encoder and all(torch.equal(weights[k], pretrained[k]) for k in encoder)
    seg = [k for k in weights if ".seg_layers." in k]
    assert seg and all(weights[k].shape[0] == 2 for k in seg if k.endswith(".weight"))  # background + lesion
    decoder = [k for k in weights if k.startswith("decoder.stages.")]
    assert decoder and not any(torch.equal(weights[k], pretrained[k]) for k in decoder if k.endswith("conv.weight"))
    with pytest.raises(UserError, match="one encoder, no student"):
        transfer(tmp_path / "zones.pth", 501, tmp_path / "s.pth", source="student")


def test_stock_checkpoint_of_another_architecture_is_refused(nnunet_env, tmp_path, capsys):
    _stock_checkpoint(nnunet_env, tmp_path / "zones.pth", nonlin="torch.nn.ReLU")
    assert transfer_main([str(tmp_path / "zones.pth"), "-d", "501", "-o", str(tmp_path / "w.pth")]) == 2
    assert "nonlin differ" in capsys.readouterr().err and not (tmp_path / "w.pth").exists()


def test_decoder_of_a_stock_checkpoint_and_refusals(nnunet_env, tmp_path, capsys):
    """--decoder: a stock network's decoder (the zone task's) goes over but its output layers, whose
    labels differ; DeSD trains no decoder and is refused, before anything is written."""
    source = _stock_checkpoint(nnunet_env, tmp_path / "zones.pth")
    assert transfer_main([str(tmp_path / "zones.pth"), "-d", "501", "-o", str(tmp_path / "w.pth"), "--decoder"]) == 0
    out = capsys.readouterr().out
    saved = torch.load(tmp_path / "w.pth", weights_only=False)
    weights, pretrained = saved["network_weights"], source.state_dict()
    decoder = [k for k in weights if k.startswith("decoder.stages.") or k.startswith("decoder.transpconvs.")]
    assert decoder and all(torch.equal(weights[k], pretrained[k]) for k in decoder)
    assert sorted(saved["nnunet_ssl_transfer"]["decoder_keys"]) == sorted(decoder)
    assert f"and the decoder ({len(decoder)} tensors)" in out
    seg = [k for k in weights if ".seg_layers." in k and k.endswith(".weight")]
    assert seg and all(weights[k].shape[0] == 2 != pretrained[k].shape[0] for k in seg)  # the target's labels
    # a DeSD checkpoint has no decoder to give
    assert transfer_main([str(_checkpoint(nnunet_env, tmp_path / "ssl.pth")), "-d", "501", "-o",
                          str(tmp_path / "d.pth"), "--decoder"]) == 2
    assert "trains no decoder" in capsys.readouterr().err and not (tmp_path / "d.pth").exists()
