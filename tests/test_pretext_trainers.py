"""The pretext trainers with nnU-Net: stock pretraining, transfer, and stock fine-tuning from the result."""
import json
import math

import pytest
import torch

from conftest import bin_path, run_command

METHODS = {"nnUNetTrainerMAE": "ssl_mae", "nnUNetTrainerModelsGenesis": "ssl_genesis", "nnUNetTrainerInpainting": "ssl_inpainting",
           "nnUNetTrainerRotation": "ssl_rotation", "nnUNetTrainerSimCLR": "ssl_simclr",
           "nnUNetTrainerMoCo": "ssl_moco", "nnUNetTrainerCMUNet": "ssl_cmunet"}
# settings that keep the tests' runs small
SETTINGS = {"nnUNetTrainerMoCo": {"queue_size": 16, "projection_dim": 16, "hidden_dim": 32},
            "nnUNetTrainerSimCLR": {"projection_dim": 16, "hidden_dim": 32},
            "nnUNetTrainerCMUNet": {"projection_dim": 16, "hidden_dim": 32}}
RUN = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}
# the stock fine-tuning command runs for MAE, from the SSL checkpoint itself (a transferred file goes
# through it in test_end_to_end); for every method its first step, nnU-Net's load_pretrained_weights,
# runs in this process on both files (to keep the suite's time)
FINE_TUNED = {"nnUNetTrainerMAE"}
# the methods whose decoder is trained (nnunet-ssl-transfer --decoder takes it)
DECODER_TRAINED = {"nnUNetTrainerMAE", "nnUNetTrainerModelsGenesis", "nnUNetTrainerInpainting", "nnUNetTrainerCMUNet"}
BUDGET = {**RUN, "final_validation": False}


def _plans_and_json(root):
    folder = root / "preprocessed" / "Dataset501_Tiny"
    return (json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8")),
            json.loads((folder / "dataset.json").read_text(encoding="utf-8")))


def _write_plans(root, trainer: str) -> str:
    """A plans copy of the trainer's own (same preprocessed data), so the shared plans stay as they are."""
    plans, _ = _plans_and_json(root)
    name = f"nnUNetPlans_{trainer}"
    plans["plans_name"] = name
    cfg = plans["configurations"]["3d_fullres"]
    cfg[METHODS[trainer]] = {**RUN, **SETTINGS.get(trainer, {})}
    cfg["budget"] = dict(BUDGET)
    (root / "preprocessed" / "Dataset501_Tiny" / f"{name}.json").write_text(json.dumps(plans), encoding="utf-8")
    return name


@pytest.mark.slow
@pytest.mark.parametrize("trainer", list(METHODS))
def test_pretraining_transfer_and_stock_finetuning(trainer, nnunet_env, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ssl.cli.transfer import main as transfer_main
    from nnunet_ssl.ssl.base import PRETEXT_FORMAT

    root, env = nnunet_env["root"], nnunet_env["env"]
    plans_name = _write_plans(root, trainer)
    run_command([bin_path("nnUNetv2_train"), "501", "3d_fullres", "0", "-tr", trainer, "-p", plans_name,
                 "-device", "cpu"], env)
    out = root / "results" / "Dataset501_Tiny" / f"{trainer}__{plans_name}__3d_fullres" / "fold_0"
    checkpoint = out / "checkpoint_final.pth"
    assert checkpoint.is_file() and (out / "checkpoint_best.pth").is_file() and (out / "progress.png").is_file()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    text = next(out.glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert f"{METHODS[trainer]} settings" in text and "no segmentation validation" in text
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["trainer_name"] == trainer
    assert saved["ssl"]["format"] == PRETEXT_FORMAT and saved["ssl"]["settings"]["num_iterations_per_epoch"] == 2
    score = saved["logging"]["mean_fg_dice"]
    assert len(score) == 1 and math.isfinite(score[0])  # the method's validation score in the pseudo-Dice slot
    if trainer == "nnUNetTrainerRotation":
        assert 0 <= score[0] <= 1 and {"head.weight", "head.bias"} <= set(saved["network_weights"])
    if trainer in ("nnUNetTrainerSimCLR", "nnUNetTrainerMoCo"):
        assert 0 <= score[0] <= 1  # retrieval accuracy
    if trainer == "nnUNetTrainerMoCo":
        weights = saved["network_weights"]
        # the queue and the key encoder are saved (resume); the key encoder moved towards the query encoder
        batch = _plans_and_json(root)[0]["configurations"]["3d_fullres"]["batch_size"]
        assert weights["queue.keys"].shape == (16, 16) and int(weights["queue.pointer"]) == 2 * batch % 16
        key_encoder = [k for k in weights if k.startswith("momentum.encoder.")]
        assert key_encoder and any(not torch.equal(weights[k], weights[k[len("momentum."):]]) for k in key_encoder)

    if trainer == "nnUNetTrainerMAE":
        assert "MAE: mask ratio 0.6" in text

    # stock -pretrained_weights takes the SSL checkpoint itself: every key but the output layer
    plans, dataset_json = _plans_and_json(root)
    pm = PlansManager(plans)

    def segmentation_network():
        torch.manual_seed(1)
        return nnUNetTrainer.build_network_architecture(
            pm, pm.get_configuration("3d_fullres"), 1, pm.get_label_manager(dataset_json).num_segmentation_heads, True)

    segmentation = segmentation_network()
    fresh = {k: v.clone() for k, v in segmentation.state_dict().items()}
    load_pretrained_weights(segmentation, str(checkpoint))
    pretrained = saved["network_weights"]
    for key, value in segmentation.state_dict().items():
        if ".seg_layers." in key:  # the output layer, whose channels differ, stays nnU-Net's own
            assert torch.equal(value, fresh[key]), key
        else:
            assert torch.equal(value, pretrained[key]), key

    # nnunet-ssl-transfer takes its encoder into a freshly initialised network
    weights = tmp_path / "pretrained.pth"
    assert transfer_main([str(checkpoint), "-d", "501", "-p", plans_name, "-o", str(weights)]) == 0
    transferred = torch.load(weights, weights_only=False)
    meta = transferred["nnunet_ssl_transfer"]
    assert meta["source_format"] == PRETEXT_FORMAT and meta["ssl_settings"] == saved["ssl"]["settings"]
    encoder = [k for k in transferred["network_weights"] if k.startswith("encoder.")]
    assert encoder and all(torch.equal(transferred["network_weights"][k], pretrained[k]) for k in encoder)
    tuned_start = segmentation_network()
    load_pretrained_weights(tuned_start, str(weights))
    assert all(torch.equal(tuned_start.state_dict()[k], pretrained[k]) for k in encoder)

    # --decoder: the pretrained decoder too (but its output layers), for the methods that train one
    with_decoder = tmp_path / "with_decoder.pth"
    code = transfer_main([str(checkpoint), "-d", "501", "-p", plans_name, "-o", str(with_decoder), "--decoder"])
    assert saved["ssl"]["trains_decoder"] == (trainer in DECODER_TRAINED)
    if trainer in DECODER_TRAINED:
        assert code == 0
        state = torch.load(with_decoder, weights_only=False)["network_weights"]
        decoder = [k for k in state if k.startswith("decoder.") and ".seg_layers." not in k
                   and not k.startswith("decoder.encoder.")]
        assert decoder and all(torch.equal(state[k], pretrained[k]) for k in decoder)
        fresh_seg = [k for k in state if ".seg_layers." in k]
        assert fresh_seg and all(torch.equal(state[k], transferred["network_weights"][k]) for k in fresh_seg)
        # without --decoder the decoder is nnU-Net's fresh initialisation
        assert not all(torch.equal(transferred["network_weights"][k], pretrained[k]) for k in decoder)
    else:
        assert code == 2 and not with_decoder.exists()

    if trainer in FINE_TUNED:
        # from the SSL checkpoint itself (decoder too)
        proc = run_command([bin_path("nnUNetv2_train"), "501", "3d_fullres", "0", "-tr", "nnUNetTrainerBudget",
                            "-p", plans_name, "-device", "cpu", "-pretrained_weights", str(checkpoint)], env)
        assert "Loading pretrained weights from file" in proc.stdout
        tuned = root / "results" / "Dataset501_Tiny" / f"nnUNetTrainerBudget__{plans_name}__3d_fullres" / "fold_0"
        assert (tuned / "checkpoint_final.pth").is_file()


def test_rotation_trainer_keeps_labels_honest(nnunet_env):
    """No mirroring along the rotation plane, augmentation turns of at most 30 degrees, square patches."""
    from nnunet_ssl.ssl.rotation.trainer import nnUNetTrainerRotation

    plans, dataset_json = _plans_and_json(nnunet_env["root"])
    cfg = plans["configurations"]["3d_fullres"]
    cfg["patch_size"] = [8, 40, 48]  # anisotropic: nnU-Net would turn by up to 180 degrees in-plane
    cfg["ssl_rotation"] = {"plane": [1, 2]}
    plans["continue_training"] = False
    trainer = nnUNetTrainerRotation(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
    rotation, dummy_2d, initial, mirror = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert dummy_2d and mirror == (0,) and trainer.inference_allowed_mirroring_axes == (0,)
    assert max(abs(r) for r in rotation) == pytest.approx(math.radians(30))
    assert all(i >= p for i, p in zip(initial, cfg["patch_size"]))
    data = torch.randn(3, 1, 8, 40, 48)
    inputs, targets = trainer.pretext_batch(data, torch.Generator().manual_seed(0))
    assert inputs.shape == (3, 1, 8, 40, 40) and targets["labels"].shape == (3,)
    crop = data[..., 4:44]
    for sample, k, original in zip(inputs, targets["labels"], crop):
        assert torch.equal(torch.rot90(sample, -int(k), (2, 3)), original)
    logits = torch.zeros(3, 4)
    logits[torch.arange(3), targets["labels"]] = 5.0
    trainer.loss = trainer._build_loss()
    loss, stats = trainer.pretext_loss(logits, targets)
    assert int(stats["correct"]) == 3 and loss.item() < 0.1
    assert trainer.validation_score({"correct": [3, 1], "count": [3, 3]}) == pytest.approx(4 / 6)


@pytest.mark.parametrize("trainer", list(METHODS))
def test_every_method_steps_on_the_2d_configuration_with_two_channels(trainer, nnunet_env):
    """One training and one validation step of each method on nnU-Net's ``2d`` configuration of two-channel data."""
    import importlib

    plans, dataset_json = _plans_and_json(nnunet_env["root"])
    assert "2d" in plans["configurations"]
    cfg = plans["configurations"]["2d"]
    cfg[METHODS[trainer]] = {**RUN, **SETTINGS.get(trainer, {})}
    # nnU-Net's initialize() only looks at the folder's file type; the steps get their batch here
    cfg["data_identifier"] = plans["configurations"]["3d_fullres"]["data_identifier"]
    plans["continue_training"] = False
    dataset_json = {**dataset_json, "channel_names": {"0": "CT", "1": "CT"}}
    module = {"nnUNetTrainerModelsGenesis": "genesis", "nnUNetTrainerCMUNet": "cmunet"}.get(
        trainer, trainer[len("nnUNetTrainer"):].lower())
    cls = getattr(importlib.import_module(f"nnunet_ssl.ssl.{module}.trainer"), trainer)
    t = cls(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
    t.initialize()
    assert t.num_input_channels == 2
    patch = t.configuration_manager.patch_size
    assert len(patch) == 2
    torch.manual_seed(0)
    data = torch.nn.functional.avg_pool2d(torch.randn(2, 2, *patch), 3, 1, 1) * 3
    before = {k: v.clone() for k, v in t.network.state_dict().items()}
    t.on_train_epoch_start()
    loss = float(t.train_step({"data": data.clone(), "target": None})["loss"])
    assert math.isfinite(loss)
    changed = [k for k, v in t.network.state_dict().items() if k.startswith("encoder.") and not torch.equal(v, before[k])]
    assert changed  # the encoder learnt
    t.on_validation_epoch_start()
    out = t.validation_step({"data": data.clone(), "target": None})
    t.on_validation_epoch_end([out])
    assert math.isfinite(t.logger.get_value("mean_fg_dice", step=-1))


def test_cmunet_online_branch_encodes_sparsely_and_the_target_branch_densely(nnunet_env):
    """CM-UNet's masked view: its hidden sites stay empty at every encoder stage (MAE's sparse
    encoding); the momentum (target) branch, a copy of the encoder, has no such hooks."""
    from nnunet_ssl.ssl.cmunet.trainer import nnUNetTrainerCMUNet
    from nnunet_ssl.ssl.mae.masking import visible_at

    plans, dataset_json = _plans_and_json(nnunet_env["root"])
    cfg = plans["configurations"]["3d_fullres"]
    cfg["ssl_cmunet"] = {**RUN, **SETTINGS["nnUNetTrainerCMUNet"]}
    plans["continue_training"] = False
    t = nnUNetTrainerCMUNet(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
    t.initialize()
    torch.manual_seed(0)
    data = torch.randn(2, 1, *t.configuration_manager.patch_size)
    inputs, targets = t.pretext_batch(data, torch.Generator().manual_seed(0))
    visible = ~targets["mask"].any(dim=1, keepdim=True)
    network = t.network
    with torch.no_grad():
        with t.forward_context(targets):
            sparse = network.encoder(inputs)
            reconstruction, prediction = network(inputs)  # the whole forward pass of a step
        dense = network.encoder(inputs)
        target = network.momentum.encoder(inputs)
    assert reconstruction.shape == data.shape and prediction.shape == (2, 16)
    for online, plain, momentum in zip(sparse, dense, target):
        hidden = ~visible_at(visible, online.shape[2:])
        assert hidden.any() and (online * hidden).abs().max() == 0
        assert (plain * hidden).abs().max() > 0 and (momentum * hidden).abs().max() > 0
    # the setting turns it off
    cfg["ssl_cmunet"]["sparse"] = False
    plans["continue_training"] = False  # nnU-Net's trainer takes it out of the plans
    off = nnUNetTrainerCMUNet(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
    off.initialize()
    assert off._sparse is None
