"""Fine-tuning trainers built in-process on the tiny planned dataset, plus one real nnUNetv2_train run."""
import json

import pytest
import torch

from conftest import bin_path, run_command
from nnunet_ssl.finetune import trainers as ft
from nnunet_ssl.finetune.freezing import encoder_stages, split_parameters
from nnunet_ssl.finetune.warmup import warmup_poly_lr


def _trainer(cls, env, finetune=None, iterations=2):
    pre = env["root"] / "preprocessed" / "Dataset501_Tiny"
    plans = json.loads((pre / "nnUNetPlans.json").read_text(encoding="utf-8"))
    dataset_json = json.loads((pre / "dataset.json").read_text(encoding="utf-8"))
    if finetune is not None:
        plans["configurations"]["3d_fullres"]["finetune"] = finetune
    plans["continue_training"] = False
    torch.manual_seed(0)
    trainer = cls(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
    trainer.num_iterations_per_epoch = iterations
    return trainer


def _start_epoch(trainer, epoch):
    trainer.current_epoch = epoch
    trainer.on_train_epoch_start()


def _train(trainer, steps):
    for _ in range(steps):
        trainer.train_step(next(trainer.dataloader_train))


def _snapshot(params):
    return [p.detach().clone() for p in params]


def test_frozen_encoder_stays_bit_identical_while_decoder_trains(nnunet_env):
    trainer = _trainer(ft.nnUNetTrainerFrozenEncoder, nnunet_env)
    trainer.on_train_start()
    encoder, rest = split_parameters(trainer.network)
    enc0, dec0 = _snapshot(encoder), _snapshot(rest)
    _start_epoch(trainer, 0)
    _train(trainer, 2)
    assert all(torch.equal(a, b) for a, b in zip(enc0, encoder))
    assert sum(not torch.equal(a, b) for a, b in zip(dec0, rest)) > len(rest) // 2
    assert not any(p in trainer.optimizer.state for p in encoder)  # no momentum, no weight decay
    _start_epoch(trainer, 999)  # still frozen at any epoch
    assert not any(p.requires_grad for p in encoder)
    log = open(trainer.log_file, encoding="utf-8").read()
    assert "become trainable at epochs ['never', 'never', 'never', 'never']" in log


def test_unfreeze_at_n_from_plans_block_then_encoder_trains(nnunet_env):
    trainer = _trainer(ft.nnUNetTrainerUnfreezeAtN, nnunet_env, {"num_epochs": 10, "unfreeze_epoch": 2})
    assert trainer.num_epochs == 10 and trainer.finetune_settings.unfreeze_epoch == 2
    trainer.on_train_start()
    encoder, _ = split_parameters(trainer.network)
    enc0 = _snapshot(encoder)
    _start_epoch(trainer, 0)
    _train(trainer, 1)
    _start_epoch(trainer, 1)
    assert not any(p.requires_grad for p in encoder)
    assert all(torch.equal(a, b) for a, b in zip(enc0, encoder))
    _start_epoch(trainer, 2)
    assert all(p.requires_grad for p in encoder)
    _train(trainer, 1)
    assert all(not torch.equal(a, b) for a, b in zip(enc0, encoder))
    log = open(trainer.log_file, encoding="utf-8").read()
    assert "Epoch 0: encoder stages frozen (stem first) [True, True, True, True]" in log
    assert "Epoch 2: encoder stages frozen (stem first) [False, False, False, False]" in log


def test_paper_presets_fix_their_values_and_say_so(nnunet_env):
    trainer = _trainer(ft.nnUNetTrainerUnfreezeAt66, nnunet_env, {"unfreeze_epoch": 5})
    assert trainer.num_epochs == 100 and trainer.finetune_settings.unfreeze_epoch == 66
    assert trainer._preset_overrides == ["unfreeze_epoch"]
    assert _trainer(ft.nnUNetTrainerUnfreezeAt33, nnunet_env).finetune_settings.unfreeze_epoch == 33
    assert _trainer(ft.nnUNetTrainerWarmup_300epochs, nnunet_env).num_epochs == 300
    assert _trainer(ft.nnUNetTrainer_300epochs, nnunet_env).num_epochs == 300


def test_gradual_unfreezing_order_and_epochs(nnunet_env):
    trainer = _trainer(ft.nnUNetTrainerGradualUnfreeze, nnunet_env,
                       {"num_epochs": 20, "gradual_start_epoch": 1, "gradual_interval": 2})
    trainer.initialize()
    stages = encoder_stages(trainer.network)
    assert len(stages) == 4
    assert trainer.unfreeze_epochs(4) == [7, 5, 3, 1]  # stem last, deepest first
    seen = {}
    for epoch in range(9):
        _start_epoch(trainer, epoch)
        seen[epoch] = [all(not p.requires_grad for p in s.parameters()) for s in stages]
    assert seen[0] == [True, True, True, True]
    assert seen[1] == seen[2] == [True, True, True, False]
    assert seen[3] == [True, True, False, False]
    assert seen[5] == [True, False, False, False]
    assert seen[7] == seen[8] == [False, False, False, False]
    # defaults derived from the run length
    default = _trainer(ft.nnUNetTrainerGradualUnfreeze_100epochs, nnunet_env)
    assert default.unfreeze_epochs(4) == [49, 36, 23, 10]


def test_warmup_trainer_learning_rates(nnunet_env):
    trainer = _trainer(ft.nnUNetTrainerWarmup, nnunet_env, {"num_epochs": 12, "warmup_epochs": 3})
    trainer.initialize()
    for epoch in range(12):
        trainer.lr_scheduler.step(epoch)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(
            warmup_poly_lr(epoch, trainer.initial_lr, 12, 3))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * (1 - 8 / 9) ** 0.9)


def test_encoder_learning_rate_is_a_fraction_of_the_decoders(nnunet_env):
    trainer = _trainer(ft.nnUNetTrainerEncoderLR, nnunet_env, {"encoder_lr_factor": 0.25})
    trainer.initialize()
    decoder_group, encoder_group = trainer.optimizer.param_groups
    encoder, rest = split_parameters(trainer.network)
    assert [id(p) for p in encoder_group["params"]] == [id(p) for p in encoder]
    assert [id(p) for p in decoder_group["params"]] == [id(p) for p in rest]
    trainer.lr_scheduler.step(10)
    assert encoder_group["lr"] == pytest.approx(0.25 * decoder_group["lr"])
    assert decoder_group["lr"] == pytest.approx(1e-2 * (1 - 10 / 1000) ** 0.9)
    assert decoder_group["momentum"] == 0.99 and decoder_group["weight_decay"] == 3e-5


def test_nnunet_finds_the_trainers(nnunet_env):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    for name in ("nnUNetTrainerUnfreezeAt33", "nnUNetTrainerGradualUnfreeze", "nnUNetTrainer_300epochs"):
        assert recursive_find_trainer_class_by_name(name) is getattr(ft, name)


@pytest.mark.slow
def test_real_finetuning_run_with_pretrained_weights(ssl_run, nnunet_env, tmp_path):
    """nnUNetv2_train with the 2-epoch demo preset: frozen in epoch 0, trained in epoch 1, then validated."""
    from nnunet_ssl.transfer import transfer

    env = ssl_run["env"]
    weights = tmp_path / "pretrained.pth"
    transfer(ssl_run["checkpoint"], 501, weights)  # the command itself is tested in test_transfer.py
    run_command([bin_path("nnUNetv2_train"), "501", "3d_fullres", "0", "-tr", "nnUNetTrainerUnfreezeAt_Demo",
                 "-pretrained_weights", str(weights), "-device", "cpu"], env)
    out = ssl_run["root"] / "results" / "Dataset501_Tiny" / "nnUNetTrainerUnfreezeAt_Demo__nnUNetPlans__3d_fullres"
    log = next((out / "fold_0").glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert "Epoch 0: encoder stages frozen (stem first) [True, True, True, True]" in log
    assert "Epoch 1: encoder stages frozen (stem first) [False, False, False, False]" in log
    assert (out / "fold_0" / "validation" / "summary.json").is_file()
    final = torch.load(out / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    start = torch.load(weights, weights_only=False)["network_weights"]
    enc = [k for k in start if k.startswith("encoder.")]
    assert any(not torch.equal(final[k], start[k]) for k in enc)  # trained in epoch 1


def test_strategies_take_the_budget_block_over_their_own_length(nnunet_env):
    pre = nnunet_env["root"] / "preprocessed" / "Dataset501_Tiny"
    plans = json.loads((pre / "nnUNetPlans.json").read_text(encoding="utf-8"))
    dataset_json = json.loads((pre / "dataset.json").read_text(encoding="utf-8"))
    plans["configurations"]["3d_fullres_budget"] = {
        "inherits_from": "3d_fullres", "finetune": {"unfreeze_epoch": 2},
        "budget": {"num_epochs": 4, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1,
                   "final_validation": False, "fold_seeds": [7]}}

    def make(cls):
        trainer = cls(dict(plans, continue_training=False), "3d_fullres_budget", 0, dataset_json, torch.device("cpu"))
        return trainer, torch.rand(2)

    t, first = make(ft.nnUNetTrainerUnfreezeAt66)  # the preset's 100 epochs lose to the budget's 4
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == (4, 3, 1)
    assert t.budget_seed == 7 and not t.final_validation
    t2, second = make(ft.nnUNetTrainerUnfreezeAtN)
    assert torch.equal(first, second) and t2.finetune_settings.unfreeze_epoch == 2 and t2.num_epochs == 4
    plain = _trainer(ft.nnUNetTrainerUnfreezeAtN, nnunet_env)
    assert plain.budget_seed is None and plain.final_validation  # no budget block: nothing changes
