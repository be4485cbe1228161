"""Does pretraining learn something useful? A linear probe of lesion voxels, before and after.

Every SSL method pretrains briefly on a dataset of lesion phantoms (its own, planned here with
the 8-64 U-Net of the label-efficiency benchmark); a logistic regression on the frozen
encoder's *bottleneck* features must then separate lesion from healthy brain on held-out
phantoms by a clear margin over the same probe on the same encoder before training.

Why the bottleneck and 16 probe phantoms: measured on the tests' tiny 4-32 U-Net with its five
probe cases, the probe of all stages concatenated gave 0.26-0.68 for untrained encoders of three
seeds and moved either way after pretraining; the first stage is close to the image, which an
untrained encoder passes through already, so it says nothing about what pretraining built, and
five cases are too few. The deepest stage is what pretraining has to make: see
docs/label-efficiency.md for the figures.
"""
import copy
import json
import os
import random

import numpy as np

import pytest
import torch

from nnunet_ssl.probe import ProbeMonitor, phantom_probe_cases
from conftest import plan_phantoms

MARGIN = 0.05  # ROC AUC over the untrained encoder
SHAPE, DROP_HU = (32, 48, 48), 20.0  # the benchmark's phantoms


@pytest.fixture(scope="module")
def probe_dataset(tmp_path_factory):
    """12 lesion phantoms planned with an 8-64 U-Net; 8 + 8 other phantoms for the probe."""
    planned = plan_phantoms(tmp_path_factory.mktemp("probe"), 502, "Probe", 8, n_train=12, shape=SHAPE,
                            lesion_drop_hu=DROP_HU)
    root, env = planned["root"], planned["env"]
    folder = root / "preprocessed" / "Dataset502_Probe"
    # seeds 1 and 2: no phantom of the pretraining dataset (seed 0) and none shared between the halves
    train = phantom_probe_cases(folder / "nnUNetPlans.json", 8, SHAPE, DROP_HU, seed=1)
    test = phantom_probe_cases(folder / "nnUNetPlans.json", 8, SHAPE, DROP_HU, seed=2)
    return {"root": root, "env": env, "folder": folder,
            "monitor": ProbeMonitor.from_cases(train, test, voxels_per_class=300, stages=[-1])}


def _pretext(module: str, cls: str, block: str):
    """A method on the pretext base (``module.cls``, settings block ``block``), 80 iterations."""
    def make(plans, dataset_json, fold):
        import importlib

        trainer_class = getattr(importlib.import_module(module), cls)
        plans["configurations"]["3d_fullres"][block] = {
            "num_epochs": 2, "num_iterations_per_epoch": 40, "num_val_iterations_per_epoch": 1}
        trainer = trainer_class(plans, "3d_fullres", fold, dataset_json, device=torch.device("cpu"))
        return trainer, lambda t: t.network.encoder
    return make


def _desd(plans, dataset_json, fold):
    from nnunet_ssl.desd.trainer import nnUNetTrainerDeSD

    plans["configurations"]["3d_fullres"]["ssl"] = {
        "num_epochs": 2, "num_iterations_per_epoch": 40, "num_val_iterations_per_epoch": 1, "batch_size": 4,
        "view_size": [16, 32, 32], "hidden_dim": 256, "bottleneck_dim": 64, "monitor_warmup_epochs": 1}
    trainer = nnUNetTrainerDeSD(plans, "3d_fullres", fold, dataset_json, device=torch.device("cpu"))
    return trainer, lambda t: t.network.teacher.encoder


OPT_IN = pytest.mark.skipif(not os.environ.get("NNUNET_SSL_PROBE_ALL"),
                            reason="opt-in (NNUNET_SSL_PROBE_ALL=1): a narrow or no margin, or the suite's time; "
                                   "see docs/methods.md")
METHODS = [
    pytest.param(_pretext("nnunet_ssl.ssl.mae.trainer", "nnUNetTrainerMAE", "ssl_mae"), id="mae"),
    pytest.param(_pretext("nnunet_ssl.ssl.genesis.trainer", "nnUNetTrainerModelsGenesis", "ssl_genesis"),
                 id="genesis"),
    pytest.param(_pretext("nnunet_ssl.ssl.inpainting.trainer", "nnUNetTrainerInpainting", "ssl_inpainting"),
                 id="inpainting"),
    pytest.param(_pretext("nnunet_ssl.ssl.rotation.trainer", "nnUNetTrainerRotation", "ssl_rotation"),
                 id="rotation"),
    # the contrastive methods, opt-in (NNUNET_SSL_PROBE_ALL=1): SimCLR 0.587 -> 0.646 with nnU-Net's 10^8
    # fingerprint samples, 0.676 with the tests' 10^6 (too unsteady for a default test); CM-UNet -> 0.712
    # with its sparse encoding (opt-in for the suite's time); MoCo 0.587 -> 0.561 (strict xfail when run)
    pytest.param(_pretext("nnunet_ssl.ssl.simclr.trainer", "nnUNetTrainerSimCLR", "ssl_simclr"), id="simclr",
                 marks=OPT_IN),
    pytest.param(_pretext("nnunet_ssl.ssl.moco.trainer", "nnUNetTrainerMoCo", "ssl_moco"), id="moco",
                 marks=[OPT_IN, pytest.mark.xfail(strict=True, reason="MoCo does not improve the lesion probe in "
                                                  "80 iterations on phantoms")]),
    pytest.param(_pretext("nnunet_ssl.ssl.cmunet.trainer", "nnUNetTrainerCMUNet", "ssl_cmunet"), id="cmunet",
                 marks=OPT_IN),
    # measured: in 80 (and in 150) iterations DeSD's teacher encoder scores what it scored untrained (within 0.002),
    # see docs/label-efficiency.md; strict, so a DeSD that starts to pass is noticed
    pytest.param(_desd, id="desd", marks=pytest.mark.xfail(
        strict=True, reason="DeSD does not improve the lesion probe over an untrained encoder on phantoms")),
]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_pretraining_improves_the_linear_probe(method, probe_dataset, monkeypatch):
    for k, v in probe_dataset["env"].items():
        monkeypatch.setenv(k, v)
    folder = probe_dataset["folder"]
    plans = json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8"))
    plans["continue_training"] = False  # nnU-Net's trainer reads it; the train command sets it
    dataset_json = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    # the network's initialisation, the data loader's crops and augmentation, the masks: all seeded
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    trainer, encoder_of = method(plans, dataset_json, fold=5)
    trainer.initialize()
    untrained = copy.deepcopy(encoder_of(trainer))
    trainer.run_training()
    monitor = probe_dataset["monitor"]
    before, after = monitor.score(untrained), monitor.score(encoder_of(trainer))
    print(f"bottleneck probe ROC AUC: untrained {before:.3f}, pretrained {after:.3f}")
    assert after >= before + MARGIN, f"untrained {before:.3f}, pretrained {after:.3f}"
