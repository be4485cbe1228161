"""nnunet-ssl-transfer: encoder equality, prefixes, and clear refusals that lose nothing."""
import json
import shutil

import pytest
import torch

from conftest import bin_path, run_command
from nnunet_ssl.checkpoint import save_atomic
from nnunet_ssl.cli.transfer import main as transfer_main
from nnunet_ssl.transfer import encoder_state, load_ssl_checkpoint, transfer
from nnunet_ssl.errors import UserError


def test_transfer_puts_teacher_encoder_into_full_network(ssl_run, nnunet_env, tmp_path):
    out = tmp_path / "w.pth"
    report = transfer(ssl_run["checkpoint"], 501, out)
    saved = torch.load(out, weights_only=False)["network_weights"]
    ssl = torch.load(ssl_run["checkpoint"], weights_only=False)["network_weights"]
    teacher = {k[len("teacher."):]: v for k, v in ssl.items() if k.startswith("teacher.encoder.")}
    student = {k[len("student."):]: v for k, v in ssl.items() if k.startswith("student.encoder.")}
    assert report.n_encoder_tensors == len(teacher) > 0
    for k, v in teacher.items():
        assert torch.equal(saved[k], v), k
        assert torch.equal(saved["decoder." + k], v)  # nnU-Net's decoder holds the same encoder
    # teacher and student differ after training, so the choice matters
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)
    assert any(k.startswith("decoder.seg_layers") for k in saved)

    out_s = tmp_path / "s.pth"
    transfer(ssl_run["checkpoint"], 501, out_s, source="student")
    saved_s = torch.load(out_s, weights_only=False)["network_weights"]
    assert all(torch.equal(saved_s[k], v) for k, v in student.items())


def test_wrapper_prefixes_are_stripped(ssl_run, tmp_path):
    ckpt = torch.load(ssl_run["checkpoint"], weights_only=False)
    ckpt["network_weights"] = {("module._orig_mod." + k): v for k, v in ckpt["network_weights"].items()}
    wrapped = tmp_path / "wrapped.pth"
    torch.save(ckpt, wrapped)
    plain = encoder_state(load_ssl_checkpoint(ssl_run["checkpoint"]))
    got = encoder_state(load_ssl_checkpoint(wrapped))
    assert got.keys() == plain.keys()
    assert all(torch.equal(got[k], plain[k]) for k in plain)


def test_refuses_other_encoder_with_first_key_and_shapes(ssl_run, nnunet_env, tmp_path):
    pre = nnunet_env["root"] / "preprocessed" / "Dataset501_Tiny"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [2 * f for f in arch["features_per_stage"]]
    plans["plans_name"] = "WidePlans"
    (pre / "WidePlans.json").write_text(json.dumps(plans))
    with pytest.raises(UserError, match=r"shape mismatch at encoder\.stages\.0\.0\.convs\.0\.conv\.weight: "
                                        r"SSL checkpoint \(4, 1, 3, 3, 3\), target network \(8, 1, 3, 3, 3\)"):
        transfer(ssl_run["checkpoint"], 501, tmp_path / "x.pth", plans="WidePlans")
    assert not (tmp_path / "x.pth").exists()


def test_refuses_non_ssl_checkpoint_and_missing_dataset(ssl_run, nnunet_env, tmp_path):
    foreign = tmp_path / "foreign.pth"
    torch.save({"network_weights": {"encoder.x": torch.zeros(1)}}, foreign)
    with pytest.raises(UserError, match="not an SSL checkpoint"):
        transfer(foreign, 501, tmp_path / "a.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        transfer(tmp_path / "garbage.pth", 501, tmp_path / "a.pth")
    with pytest.raises(UserError, match="does not exist"):
        transfer(tmp_path / "missing.pth", 501, tmp_path / "a.pth")
    with pytest.raises(UserError, match="dataset 999 not found"):
        transfer(ssl_run["checkpoint"], 999, tmp_path / "a.pth")
    assert not (tmp_path / "a.pth").exists()


def test_existing_output_is_kept_without_force(ssl_run, nnunet_env, tmp_path, capsys):
    out = tmp_path / "exists.pth"
    out.write_bytes(b"precious")
    code = transfer_main([str(ssl_run["checkpoint"]), "-d", "501", "-o", str(out)])
    assert code == 2 and "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert transfer_main([str(ssl_run["checkpoint"]), "-d", "501", "-o", str(out), "--force"]) == 0
    assert "network_weights" in torch.load(out, weights_only=False)


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "ckpt.pth"
    save_atomic({"a": 1}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"b": Unpicklable()}, target)
    assert torch.load(target, weights_only=False) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_transfer_command_in_subprocess(ssl_run, tmp_path):
    out = tmp_path / "cli.pth"
    proc = run_command([bin_path("nnunet-ssl-transfer"), str(ssl_run["checkpoint"]), "-d", "501",
                        "-o", str(out)], ssl_run["env"])
    assert out.is_file() and "pretrained_weights" in proc.stdout
