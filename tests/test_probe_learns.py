"""Does pretraining learn something useful? A linear probe of lesion voxels, before and after.

Every SSL method pretrains briefly on the phantom dataset of the shared fixture; a logistic
regression on its frozen encoder's voxel features must then separate lesion from healthy brain
on held-out cases by a clear margin over the same probe on the same encoder before training.
"""
import copy
import json
import os
import random

import numpy as np

import pytest
import torch

from nnunet_ssl.probe import ProbeMonitor

MARGIN = 0.05  # ROC AUC over the untrained encoder


def _plans(root):
    folder = root / "preprocessed" / "Dataset501_Tiny"
    plans = json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8"))
    plans["continue_training"] = False
    return plans, json.loads((folder / "dataset.json").read_text(encoding="utf-8"))


def _mae(plans, dataset_json, fold):
    from nnunet_ssl.ssl.mae.trainer import nnUNetTrainerMAE

    plans["configurations"]["3d_fullres"]["ssl_mae"] = {
        "num_epochs": 12, "num_iterations_per_epoch": 25, "num_val_iterations_per_epoch": 1}
    trainer = nnUNetTrainerMAE(plans, "3d_fullres", fold, dataset_json, device=torch.device("cpu"))
    return trainer, lambda t: t.network.encoder


def _desd(plans, dataset_json, fold):
    from nnunet_ssl.desd.trainer import nnUNetTrainerDeSD

    plans["configurations"]["3d_fullres"]["ssl"] = {
        "num_epochs": 6, "num_iterations_per_epoch": 25, "num_val_iterations_per_epoch": 1, "batch_size": 4,
        "view_size": [16, 32, 32], "hidden_dim": 256, "bottleneck_dim": 64, "monitor_warmup_epochs": 1}
    trainer = nnUNetTrainerDeSD(plans, "3d_fullres", fold, dataset_json, device=torch.device("cpu"))
    return trainer, lambda t: t.network.teacher.encoder


METHODS = [
    pytest.param(_mae, id="mae"),
    # measured: DeSD's pooled objective leaves the probe where the untrained encoder has it
    # (docs/label-efficiency.md); strict, so a DeSD that starts to pass is noticed
    pytest.param(_desd, id="desd", marks=pytest.mark.xfail(
        strict=True, reason="DeSD does not improve the lesion probe over an untrained encoder on phantoms")),
]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_pretraining_improves_the_linear_probe(method, nnunet_env):
    plans, dataset_json = _plans(nnunet_env["root"])
    # the network's initialisation, the data loader's crops and augmentation, the masks: all seeded
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    trainer, encoder_of = method(plans, dataset_json, fold=5)
    trainer.initialize()
    untrained = copy.deepcopy(encoder_of(trainer))
    trainer.run_training()
    identifier = plans["configurations"]["3d_fullres"]["data_identifier"]
    monitor = ProbeMonitor(os.path.join(nnunet_env["root"], "preprocessed", "Dataset501_Tiny", identifier))
    before, after = monitor.score(untrained), monitor.score(encoder_of(trainer))
    print(f"probe ROC AUC: untrained {before:.3f}, pretrained {after:.3f}")
    assert after >= before + MARGIN, f"untrained {before:.3f}, pretrained {after:.3f}"
