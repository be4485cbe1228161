"""nnunet-ssl-transfer: encoder equality, prefixes, and clear refusals that lose nothing."""
import json

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
    plans = json.loads((pre / "nnUNetPlans.json").read_text(encoding="utf-8"))
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [2 * f for f in arch["features_per_stage"]]
    plans["plans_name"] = "WidePlans"
    (pre / "WidePlans.json").write_text(json.dumps(plans), encoding="utf-8")
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


# ---------------------------------------------------------------- input channels, foreign checkpoints, adaptation plan
def _two_channel_dataset(root, dataset_id=591):
    """A planned-looking target with CT + difference image: the tiny plans, a 2-channel dataset.json."""
    src = root / "preprocessed" / "Dataset501_Tiny"
    name = f"Dataset{dataset_id}_TwoChannels"
    dst = root / "preprocessed" / name
    dst.mkdir(exist_ok=True)
    plans = json.loads((src / "nnUNetPlans.json").read_text(encoding="utf-8"))
    plans["dataset_name"] = name
    (dst / "nnUNetPlans.json").write_text(json.dumps(plans), encoding="utf-8")
    dataset = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
    dataset["channel_names"] = {"0": "CT", "1": "difference"}
    (dst / "dataset.json").write_text(json.dumps(dataset), encoding="utf-8")
    return dataset_id


def _teacher(checkpoint):
    ssl = torch.load(checkpoint, weights_only=False)["network_weights"]
    return {k[len("teacher."):]: v for k, v in ssl.items() if k.startswith("teacher.encoder.")}


IN_PROJ = ("encoder.stages.0.0.convs.0.conv.weight", "encoder.stages.0.0.convs.0.all_modules.0.weight")


def test_one_channel_encoder_into_two_channel_network_by_rule(ssl_run, nnunet_env, tmp_path):
    target = _two_channel_dataset(nnunet_env["root"])
    teacher = _teacher(ssl_run["checkpoint"])
    with pytest.raises(UserError, match=r"input channels differ .*SSL checkpoint 1, target network 2.*"
                                        r"--in-channels-rule copy\|mean\|zero"):
        transfer(ssl_run["checkpoint"], target, tmp_path / "none.pth")
    assert not (tmp_path / "none.pth").exists()

    expected = {"copy": lambda w: torch.cat([w / 2, w / 2], 1), "mean": lambda w: torch.cat([w / 2, w / 2], 1),
                "zero": lambda w: torch.cat([w, torch.zeros_like(w)], 1)}
    for rule, make in expected.items():
        out = tmp_path / f"{rule}.pth"
        report = transfer(ssl_run["checkpoint"], target, out, in_channels_rule=rule)
        assert report.in_channels == (1, 2) and report.in_channels_rule == rule
        saved = torch.load(out, weights_only=False)
        w = saved["network_weights"]
        for k, v in teacher.items():
            if k in IN_PROJ:
                assert w[k].shape == (v.shape[0], 2, *v.shape[2:])
                assert torch.equal(w[k], make(v)), (rule, k)
                assert torch.equal(w["decoder." + k], w[k])
            else:
                assert torch.equal(w[k], v), k  # everything else exactly as pretrained
        assert saved["nnunet_ssl_transfer"]["in_channels"] == [1, 2]
        assert saved["nnunet_ssl_transfer"]["in_channels_rule"] == rule
    # and nnU-Net's own loader accepts it for the 2-channel network
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunet_ssl.transfer import build_target_network

    net = build_target_network(target)
    load_pretrained_weights(net, str(tmp_path / "zero.pth"))
    assert torch.equal(net.state_dict()[IN_PROJ[0]][:, :1], teacher[IN_PROJ[0]])


def test_two_channel_encoder_into_one_channel_network_and_cli_flag(ssl_run, nnunet_env, tmp_path, capsys):
    ckpt = torch.load(ssl_run["checkpoint"], weights_only=False)
    w = ckpt["network_weights"]
    for k in IN_PROJ:  # pretend pretraining saw CT + difference image
        w["teacher." + k] = torch.cat([w["teacher." + k], 3 * w["teacher." + k]], 1)
    two = tmp_path / "two_channel_ssl.pth"
    torch.save(ckpt, two)
    one = w["teacher." + IN_PROJ[0]]
    with pytest.raises(UserError, match="rule 'copy' adds channels"):
        transfer(two, 501, tmp_path / "c.pth", in_channels_rule="copy")
    transfer(two, 501, tmp_path / "z.pth", in_channels_rule="zero")
    assert torch.equal(torch.load(tmp_path / "z.pth", weights_only=False)["network_weights"][IN_PROJ[0]],
                       one[:, :1])
    assert transfer_main([str(two), "-d", "501", "-o", str(tmp_path / "m.pth"), "--in-channels-rule", "mean"]) == 0
    got = torch.load(tmp_path / "m.pth", weights_only=False)["network_weights"][IN_PROJ[0]]
    torch.testing.assert_close(got, one.sum(1, keepdim=True))  # mean * 2 / 1 = sum: same response to CT in both
    # a real topology difference stays an error whatever the rule
    pre = nnunet_env["root"] / "preprocessed" / "Dataset501_Tiny"
    plans = json.loads((pre / "nnUNetPlans.json").read_text(encoding="utf-8"))
    kernels = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["kernel_sizes"]
    kernels[-1] = [1, 3, 3]
    plans["plans_name"] = "OtherKernelPlans"
    (pre / "OtherKernelPlans.json").write_text(json.dumps(plans), encoding="utf-8")
    capsys.readouterr()
    assert transfer_main([str(two), "-d", "501", "-o", str(tmp_path / "k.pth"), "-p", "OtherKernelPlans",
                          "--in-channels-rule", "zero"]) == 2
    assert "kernel_sizes differ" in capsys.readouterr().err  # the recorded architecture is checked first
    assert transfer_main([str(two), "-d", "501", "-o", str(tmp_path / "k.pth"), "-p", "OtherKernelPlans",
                          "--in-channels-rule", "zero", "--allow-architecture-difference", "kernel_sizes"]) == 2
    assert "shape mismatch at encoder.stages.3.0.convs.0.conv.weight" in capsys.readouterr().err


def test_ssl_checkpoint_carries_an_adaptation_plan_that_loads_by_its_key_rules(ssl_run):
    """What nnU-Net's pretrained fine-tuning path reads (nnssl layout), applied with the same key rules."""
    from nnunet_ssl.checkpoint import ADAPTATION_PLAN_FIELDS
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    ckpt = torch.load(ssl_run["checkpoint"], weights_only=True)  # as that path loads it
    plan = ckpt["nnssl_adaptation_plan"]
    assert set(ADAPTATION_PLAN_FIELDS) <= set(plan)
    assert plan["pretrain_num_input_channels"] == 1
    assert plan["recommended_downstream_patchsize"] == [32, 40, 40]
    config = plan["pretrain_plan"]["configurations"]["3d_fullres"]
    assert config["patch_size"] == [16, 32, 32]  # the SSL views
    assert set(config) == {"data_identifier", "preprocessor_name", "spacing_style", "normalization_schemes",
                           "use_mask_for_norm", "resampling_fn_data", "resampling_fn_data_kwargs",
                           "resampling_fn_mask", "resampling_fn_mask_kwargs", "spacing", "patch_size"}
    assert (plan["key_to_encoder"], plan["key_to_stem"]) == ("teacher.encoder.stages", "teacher.encoder.stages.0")

    # the fine-tuning path: architecture from architecture_plans, then encoder and stem by key prefix
    arch = plan["architecture_plans"]
    net = get_network_from_plans(arch["arch_class_name"], arch["arch_kwargs"], arch["arch_kwargs_requiring_import"],
                                 plan["pretrain_num_input_channels"], 2, allow_init=True, deep_supervision=False)
    weights = ckpt["network_weights"]
    assert plan["key_to_stem"] not in weights  # stem loaded separately from the encoder
    assert all(k + ".weight" in weights for k in plan["keys_to_in_proj"])

    def strip(prefix):
        return {k[len(prefix):].lstrip("."): v for k, v in weights.items() if k.startswith(prefix)}

    net.get_submodule(net.key_to_encoder).load_state_dict(strip(plan["key_to_encoder"]), strict=True)
    net.get_submodule(net.key_to_stem).load_state_dict(strip(plan["key_to_stem"]), strict=True)
    teacher = _teacher(ssl_run["checkpoint"])
    assert all(torch.equal(net.state_dict()[k], v) for k, v in teacher.items())


def test_foreign_checkpoint_with_adaptation_plan_is_accepted_when_the_encoder_matches(ssl_run, nnunet_env, tmp_path):
    """A checkpoint of another SSL framework (nnssl layout, a ResEnc U-Net under 'net.'), stem beside the stages."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    pre = nnunet_env["root"] / "preprocessed" / "Dataset501_Tiny"
    plans = json.loads((pre / "nnUNetPlans.json").read_text(encoding="utf-8"))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    arch["arch_kwargs"]["n_blocks_per_stage"] = arch["arch_kwargs"].pop("n_conv_per_stage")
    plans["plans_name"] = "ResEncTinyPlans"
    (pre / "ResEncTinyPlans.json").write_text(json.dumps(plans), encoding="utf-8")

    torch.manual_seed(3)
    source = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                    1, 5, allow_init=True, deep_supervision=False)
    foreign = tmp_path / "foreign.pth"
    torch.save({"network_weights": {"net." + k: v for k, v in source.state_dict().items()},
                "nnssl_adaptation_plan": {
                    "architecture_plans": {"arch_class_name": "ResEncL"}, "pretrain_plan": {},
                    "pretrain_num_input_channels": 1, "recommended_downstream_patchsize": [32, 40, 40],
                    "key_to_encoder": "net.encoder.stages", "key_to_stem": "net.encoder.stem",
                    "keys_to_in_proj": ["net.encoder.stem.convs.0.conv"], "key_to_lpe": None}}, foreign)
    report = transfer(foreign, 501, tmp_path / "f.pth", plans="ResEncTinyPlans")
    assert report.source == "encoder"
    saved = torch.load(tmp_path / "f.pth", weights_only=False)
    expected = {k: v for k, v in source.state_dict().items() if k.startswith("encoder.")}
    assert any(k.startswith("encoder.stem.") for k in expected)
    assert all(torch.equal(saved["network_weights"][k], v) for k, v in expected.items())
    assert saved["nnunet_ssl_transfer"]["source_format"] == "nnssl_adaptation_plan"
    with pytest.raises(UserError, match="no student"):
        transfer(foreign, 501, tmp_path / "s.pth", plans="ResEncTinyPlans", source="student")
    # the same checkpoint into the plain U-Net of nnUNetPlans: refused with the first mismatching key
    with pytest.raises(UserError, match=r"encoder key encoder\.stages\.0\.0\.convs\.0\.conv\.weight .* is missing"):
        transfer(foreign, 501, tmp_path / "p.pth")
    # an adaptation plan that does not say where the encoder is
    torch.save({"network_weights": {}, "nnssl_adaptation_plan": {"key_to_encoder": "x"}}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="lacks"):
        transfer(tmp_path / "bad.pth", 501, tmp_path / "b.pth")


def test_adaptation_plan_keys_follow_the_architecture(nnunet_env):
    from nnunet_ssl.checkpoint import nnssl_adaptation_plan

    plans = json.loads((nnunet_env["root"] / "preprocessed" / "Dataset501_Tiny" / "nnUNetPlans.json").read_text(encoding="utf-8"))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    arch["arch_kwargs"]["n_blocks_per_stage"] = arch["arch_kwargs"].pop("n_conv_per_stage")
    plan = nnssl_adaptation_plan(plans, "3d_fullres", 2, (16, 32, 32))
    assert (plan["key_to_encoder"], plan["key_to_stem"]) == ("teacher.encoder.stages", "teacher.encoder.stem")
    assert plan["keys_to_in_proj"][0] == "teacher.encoder.stem.convs.0.conv"
    assert plan["pretrain_num_input_channels"] == 2 and plan["key_to_lpe"] is None
    assert plan["architecture_plans"]["arch_class_name"] == arch["network_class_name"]
