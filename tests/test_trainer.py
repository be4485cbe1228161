"""nnUNetTrainerDeSD in-process: settings from the plans, logging, checkpoints and exact resume."""
import json

import numpy as np
import pytest
import torch

from conftest import TINY_SSL
from nnunet_ssl.desd.settings import DeSDSettings
from nnunet_ssl.desd.trainer import nnUNetTrainerDeSD


def _plans_and_json(root):
    folder = root / "preprocessed" / "Dataset501_Tiny"
    return json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8")), json.loads((folder / "dataset.json").read_text(encoding="utf-8"))


def _trainer(root, configuration="3d_fullres", fold=1, plans=None):
    base_plans, dataset_json = _plans_and_json(root)
    plans = plans or base_plans
    plans["continue_training"] = False
    return nnUNetTrainerDeSD(plans, configuration, fold, dataset_json, device=torch.device("cpu"))


def _run_epoch(trainer):
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    outs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(trainer.num_iterations_per_epoch)]
    trainer.on_train_epoch_end(outs)
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        vals = [trainer.validation_step(next(trainer.dataloader_val)) for _ in range(trainer.num_val_iterations_per_epoch)]
        trainer.on_validation_epoch_end(vals)
    trainer.on_epoch_end()


def test_settings_come_from_the_plans_and_are_logged(nnunet_env):
    trainer = _trainer(nnunet_env["root"])
    s = trainer.ssl_settings
    assert s == DeSDSettings.from_dict(TINY_SSL)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (2, 3, 2)
    assert trainer.configuration_manager.patch_size == [16, 32, 32]
    assert trainer.configuration_manager.batch_size == 2
    # the plans the trainer records are the originals, not the view-sized copy
    assert trainer.plans_manager.plans["configurations"]["3d_fullres"]["patch_size"] != [16, 32, 32]
    trainer.initialize()
    assert trainer.network.center.shape == (1, 256)
    assert len(trainer.network.student.heads) == len(trainer.network.student.encoder.stages)
    log = open(trainer.log_file, encoding="utf-8").read()
    assert '"out_dim": 256' in log and '"view_size": [' in log


def test_inherited_configuration_overrides_ssl_block(nnunet_env):
    plans, _ = _plans_and_json(nnunet_env["root"])
    plans["configurations"]["3d_ssl_small"] = {"inherits_from": "3d_fullres",
                                              "ssl": {"out_dim": 128, "num_epochs": 7, "batch_size": 3}}
    trainer = _trainer(nnunet_env["root"], "3d_ssl_small", plans=plans)
    assert (trainer.ssl_settings.out_dim, trainer.num_epochs, trainer.configuration_manager.batch_size) == (128, 7, 3)
    # names the child leaves out take the defaults, not the parent's block (nnU-Net replaces whole keys)
    assert trainer.ssl_settings.view_size == DeSDSettings().view_size


def test_unknown_setting_is_refused(nnunet_env):
    plans, _ = _plans_and_json(nnunet_env["root"])
    plans["configurations"]["3d_fullres"]["ssl"] = {"out_dims": 10}
    with pytest.raises(ValueError, match=r"Unknown SSL setting\(s\) \['out_dims'\]"):
        _trainer(nnunet_env["root"], plans=plans)


def test_checkpoint_resumes_exactly(nnunet_env):
    a = _trainer(nnunet_env["root"], fold=1)
    a.on_train_start()
    _run_epoch(a)
    latest = a.output_folder + "/checkpoint_latest.pth"
    ckpt = torch.load(latest, weights_only=False)
    assert ckpt["ssl"]["settings"] == a.ssl_settings.to_dict()
    assert ckpt["current_epoch"] == 1 and ckpt["trainer_name"] == "nnUNetTrainerDeSD"
    assert {"student.heads.0.last_layer.weight", "teacher.head.last_layer.weight", "center"} <= set(ckpt["network_weights"])

    b = _trainer(nnunet_env["root"], fold=1)
    b.load_checkpoint(latest)
    for k, v in a.network.state_dict().items():
        assert torch.equal(b.network.state_dict()[k], v), k
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i, state in sa["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][i][name]))
    assert b.current_epoch == 1
    b._step_in_epoch = 0
    assert b._iteration() == b.num_iterations_per_epoch
    assert b.logger.get_value("train_losses", None) == a.logger.get_value("train_losses", None)
    assert b._best_val_loss == a._best_val_loss
    # teacher moved away from the student during the epoch (EMA with momentum < 1) but not far
    t, s = a.network.teacher_pairs()
    assert any(not torch.equal(x, y) for x, y in zip(t, s))


def test_frozen_last_layer_in_first_epoch(nnunet_env):
    trainer = _trainer(nnunet_env["root"], fold=2)
    trainer.on_train_start()
    before = [h.last_layer.weight.detach().clone() for h in trainer.network.student.heads]
    enc_before = [p.detach().clone() for p in trainer.network.student.encoder.parameters()]
    teacher_before = [p.detach().clone() for p in trainer.network.teacher.encoder.parameters()]
    trainer.on_train_epoch_start()
    trainer._step_in_epoch = 2  # past the first warm-up iteration, where the learning rate is 0
    trainer.train_step(next(trainer.dataloader_train))
    assert all(torch.equal(b, h.last_layer.weight) for b, h in zip(before, trainer.network.student.heads))
    assert any(not torch.equal(b, p) for b, p in zip(enc_before, trainer.network.student.encoder.parameters()))
    # the EMA moved the teacher by (1 - momentum) of the way to the student
    m = float(trainer.momentum_schedule[2])
    for t0, s, t in zip(teacher_before, trainer.network.student.encoder.parameters(),
                        trainer.network.teacher.encoder.parameters()):
        torch.testing.assert_close(t, m * t0 + (1 - m) * s.detach())
    assert np.isfinite(trainer.network.center.numpy()).all() and trainer.network.center.abs().sum() > 0


def test_collapse_guard_warns_and_stops(nnunet_env):
    from nnunet_ssl.desd.monitor import CollapseError

    plans, _ = _plans_and_json(nnunet_env["root"])
    ssl = dict(plans["configurations"]["3d_fullres"]["ssl"])
    # a teacher this sharp outputs one-hot distributions: entropy ~ 0 is collapse
    ssl.update(teacher_temp=1e-4, warmup_teacher_temp=1e-4, monitor_warmup_epochs=0, collapse_patience=1,
               stop_on_collapse=True, num_epochs=3)
    plans["configurations"]["3d_collapse"] = {"inherits_from": "3d_fullres", "ssl": ssl}
    trainer = _trainer(nnunet_env["root"], "3d_collapse", fold=3, plans=plans)
    with pytest.raises(CollapseError, match="one-hot"):
        trainer.run_training()
    assert "WARNING: representation collapse" in open(trainer.log_file, encoding="utf-8").read()
    assert trainer.current_epoch == 0  # stopped after the first epoch
    import os
    assert os.path.isfile(os.path.join(trainer.output_folder, "checkpoint_latest.pth"))
    assert os.path.isfile(os.path.join(trainer.output_folder, "checkpoint_best_rankme.pth"))
