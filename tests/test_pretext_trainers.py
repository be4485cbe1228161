"""The pretext trainers with nnU-Net: stock pretraining, transfer, and stock fine-tuning from the result."""
import json
import math

import pytest
import torch

from conftest import bin_path, run_command

METHODS = {"nnUNetTrainerModelsGenesis": "ssl_genesis", "nnUNetTrainerInpainting": "ssl_inpainting",
           "nnUNetTrainerRotation": "ssl_rotation"}
RUN = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}
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
    cfg[METHODS[trainer]] = dict(RUN)
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

    # stock -pretrained_weights takes the SSL checkpoint itself: every key but the output layer
    plans, dataset_json = _plans_and_json(root)
    pm = PlansManager(plans)
    segmentation = nnUNetTrainer.build_network_architecture(
        pm, pm.get_configuration("3d_fullres"), 1, pm.get_label_manager(dataset_json).num_segmentation_heads, True)
    load_pretrained_weights(segmentation, str(checkpoint))
    pretrained = saved["network_weights"]
    for key, value in segmentation.state_dict().items():
        if ".seg_layers." not in key:
            assert torch.equal(value, pretrained[key]), key

    # nnunet-ssl-transfer takes its encoder into a freshly initialised network
    weights = tmp_path / "pretrained.pth"
    assert transfer_main([str(checkpoint), "-d", "501", "-p", plans_name, "-o", str(weights)]) == 0
    transferred = torch.load(weights, weights_only=False)
    meta = transferred["nnunet_ssl_transfer"]
    assert meta["source_format"] == PRETEXT_FORMAT and meta["ssl_settings"] == saved["ssl"]["settings"]
    encoder = [k for k in transferred["network_weights"] if k.startswith("encoder.")]
    assert encoder and all(torch.equal(transferred["network_weights"][k], pretrained[k]) for k in encoder)

    proc = run_command([bin_path("nnUNetv2_train"), "501", "3d_fullres", "0", "-tr", "nnUNetTrainerBudget",
                        "-p", plans_name, "-device", "cpu", "-pretrained_weights", str(weights)], env)
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
