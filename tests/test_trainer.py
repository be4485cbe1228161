"""nnUNetTrainerDeSD in-process: settings from the plans, logging, checkpoints and a resumed run that continues exactly."""
import copy
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


def test_checkpoint_restores_the_saved_state(nnunet_env):
    a = _trainer(nnunet_env["root"], fold=1)
    a.on_train_start()
    _run_epoch(a)
    latest = a.output_folder + "/checkpoint_latest.pth"
    ckpt = torch.load(latest, weights_only=False)
    assert ckpt["ssl"]["settings"] == a.ssl_settings.to_dict()
    assert ckpt["current_epoch"] == 1 and ckpt["trainer_name"] == "nnUNetTrainerDeSD"
    # the checkpoint of the SSL base every method shares: method and settings block recorded, DeSD's own
    # entries beside nnU-Net's, the adaptation plan at the teacher's encoder
    from nnunet_ssl.ssl.base import nnUNetTrainerSSL

    assert isinstance(a, nnUNetTrainerSSL)
    assert (ckpt["ssl"]["method"], ckpt["ssl"]["settings_block"]) == ("nnUNetTrainerDeSD", "ssl")
    assert ckpt["_best_ema"] == a._best_val_loss and ckpt["_collapsed_epochs"] == a._collapsed_epochs
    assert ckpt["nnssl_adaptation_plan"]["key_to_encoder"].startswith("teacher.")
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


def _run_epoch_on(trainer, train_batches, val_batches):
    """One epoch of nnU-Net's loop on given batches, so that two runs can see exactly the same data."""
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    outs = [trainer.train_step(b) for b in train_batches]
    trainer.on_train_epoch_end(outs)
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        trainer.on_validation_epoch_end([trainer.validation_step(b) for b in val_batches])
    trainer.on_epoch_end()


SCHEDULE_LOGS = ("lrs", "weight_decays", "momentums", "teacher_temps")


def test_resumed_run_continues_like_an_uninterrupted_one(nnunet_env):
    """k epochs straight == k/2 epochs, stop, load_checkpoint on a fresh trainer (nnU-Net's --c), k/2 epochs."""
    k = 4
    plans, _ = _plans_and_json(nnunet_env["root"])
    ssl = dict(plans["configurations"]["3d_fullres"]["ssl"], num_epochs=k + 1, warmup_epochs=2,
               warmup_teacher_temp_epochs=3, freeze_last_layer_epochs=1,
               monitor_warmup_epochs=0, collapse_patience=100,
               warmup_teacher_temp=1e-3, teacher_temp=1e-4)  # a sharp teacher: the collapse guard counts
    plans["configurations"]["3d_resume"] = {"inherits_from": "3d_fullres", "ssl": ssl}

    def fresh(fold):
        return _trainer(nnunet_env["root"], "3d_resume", fold=fold, plans=copy.deepcopy(plans))

    def started(fold):
        trainer = fresh(fold)
        torch.manual_seed(0)  # both runs start from the same initial network
        trainer.on_train_start()
        return trainer

    straight = started(0)
    n_it, n_val = straight.num_iterations_per_epoch, straight.num_val_iterations_per_epoch
    torch.manual_seed(0)
    np.random.seed(0)
    batches = [([next(straight.dataloader_train) for _ in range(n_it)],
                [next(straight.dataloader_val) for _ in range(n_val)]) for _ in range(k + 1)]
    for epoch in range(k):
        _run_epoch_on(straight, *batches[epoch])

    first = started(4)
    for epoch in range(k // 2):
        _run_epoch_on(first, *batches[epoch])
    latest = first.output_folder + "/checkpoint_latest.pth"
    del first  # the run stops here

    resumed = fresh(4)
    resumed.load_checkpoint(latest)
    resumed.on_train_start()
    assert resumed.current_epoch == k // 2
    for epoch in range(k // 2, k):
        _run_epoch_on(resumed, *batches[epoch])

    assert resumed.current_epoch == straight.current_epoch == k
    for key in SCHEDULE_LOGS:  # every epoch's value, the ones before the stop included
        assert resumed.logger.get_value(key, None) == straight.logger.get_value(key, None), key
    assert resumed.logger.get_value("train_losses", None) == pytest.approx(straight.logger.get_value("train_losses", None))
    for t in (straight, resumed):
        t.on_train_epoch_start()
    assert resumed._iteration() == straight._iteration() == k * n_it
    # the collapse guard's count of collapsed-looking epochs and the best loss survive the stop too
    # (RankMe is not compared: its fixed views are drawn anew when a run starts or resumes)
    assert straight._collapsed_epochs == k
    assert (resumed._collapsed_epochs, resumed._best_val_loss) == (straight._collapsed_epochs,
                                                                   straight._best_val_loss)
    assert resumed._epoch_stats == straight._epoch_stats
    sa, sb = straight.network.state_dict(), resumed.network.state_dict()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    # one more step on a fixed batch moves both to the same weights and optimiser state
    batch = batches[k][0][0]
    straight.train_step(batch)
    resumed.train_step(batch)
    sa, sb = straight.network.state_dict(), resumed.network.state_dict()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    oa, ob = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert oa["param_groups"] == ob["param_groups"]
    for i, state in oa["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ob["state"][i][name])), (i, name)
    assert resumed._step_in_epoch == straight._step_in_epoch == 1


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
    log = open(trainer.log_file, encoding="utf-8").read()
    assert "WARNING: representation collapse" in log
    assert "What to change: teacher temperature 0.0001 is sharp: raise teacher_temp to" in log
    assert trainer.current_epoch == 0  # stopped after the first epoch
    import os
    assert os.path.isfile(os.path.join(trainer.output_folder, "checkpoint_latest.pth"))
    assert os.path.isfile(os.path.join(trainer.output_folder, "checkpoint_best_rankme.pth"))


def test_linear_probe_is_logged_each_epoch_with_its_best_checkpoint(nnunet_env):
    import os

    from nnunet_ssl.probe import ProbeMonitor, encoder_from_ssl_checkpoint

    plans, _ = _plans_and_json(nnunet_env["root"])
    identifier = plans["configurations"]["3d_fullres"]["data_identifier"]
    ssl = dict(plans["configurations"]["3d_fullres"]["ssl"], probe_data=f"Dataset501_Tiny/{identifier}")
    plans["configurations"]["3d_probe"] = {"inherits_from": "3d_fullres", "ssl": ssl}
    trainer = _trainer(nnunet_env["root"], "3d_probe", fold=4, plans=plans)
    trainer.run_training()
    scores = trainer.logger.local_logger.my_fantastic_logging["probe_auc"]
    assert len(scores) == 2 and all(0.0 <= v <= 1.0 for v in scores)
    best = os.path.join(trainer.output_folder, "checkpoint_best_probe.pth")
    assert os.path.isfile(best)
    # the best checkpoint's teacher scores what was logged for its epoch
    monitor = ProbeMonitor(os.path.join(nnunet_env["root"], "preprocessed", "Dataset501_Tiny", identifier))
    assert monitor.score(encoder_from_ssl_checkpoint(best)) == pytest.approx(max(scores), abs=1e-6)
    assert "linear probe AUC" in open(trainer.log_file, encoding="utf-8").read()
