"""Shared fixtures: tiny networks, nnU-Net folders and a planned phantom dataset."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAINERS = REPO / "trainers"

FINGERPRINT_SAMPLES = 10 ** 6


@pytest.fixture(autouse=True, scope="session")
def fewer_fingerprint_samples():
    """nnU-Net's fingerprint draws 10^8 foreground voxels per channel (with replacement) for the
    dataset's intensity statistics whatever the dataset's size: about 6 s per channel and planning on
    two cores, for phantoms of under 10^6 voxels. Planning in this process draws 10^6 (subprocesses
    keep nnU-Net's number); the percentiles of that many draws differ from nnU-Net's by sampling
    noise only, and no test compares them with figures planned elsewhere."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor)

    stock_init = DatasetFingerprintExtractor.__init__

    def init(self, *args, **kwargs):
        stock_init(self, *args, **kwargs)
        self.num_foreground_voxels_for_intensitystats = FINGERPRINT_SAMPLES

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DatasetFingerprintExtractor, "__init__", init)
        yield


# small SSL settings for CPU runs: a few iterations of a small head
TINY_SSL = {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 2,
            "batch_size": 2, "view_size": [16, 32, 32], "out_dim": 256, "hidden_dim": 64,
            "bottleneck_dim": 32, "warmup_epochs": 1, "warmup_teacher_temp_epochs": 1}


@pytest.fixture
def tiny_unet():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    return PlainConvUNet(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], 1, 2, 1, True,
                         torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def nnunet_environment(root: Path) -> dict:
    """Environment for nnU-Net commands with their folders under ``root``."""
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"), "nnUNet_extTrainer": str(TRAINERS),
        "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false",
        "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore",
    })
    for k in ("raw", "preprocessed", "results"):
        (root / k).mkdir(parents=True, exist_ok=True)
    return env


@pytest.fixture
def raw(tmp_path, monkeypatch):
    """An empty ``nnUNet_raw`` under ``tmp_path``, the other nnU-Net folders unset."""
    raw = tmp_path / "raw"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    return raw


def plan_phantoms(root: Path, dataset_id: int, name: str, base_features: int, **phantoms) -> dict:
    """Write a phantom dataset under ``root`` (``write_phantom_dataset(**phantoms)``) and plan it
    with a ``base_features`` U-Net and the tiny SSL settings; return ``{"root", "env"}``."""
    from nnunet_ssl.phantom import write_phantom_dataset
    from nnunet_ssl.planning import plan_and_preprocess

    env = nnunet_environment(root)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        write_phantom_dataset(root / "raw", dataset_id, name, **phantoms)
        plan_and_preprocess(dataset_id, base_features=base_features, gpu_memory_gb=0.5, ssl_settings=TINY_SSL,
                            num_processes=1)
    return {"root": root, "env": env}


@pytest.fixture(scope="session")
def planned(tmp_path_factory):
    """A phantom dataset (id 501, lesion labels) planned with a tiny network; returns its environment."""
    return plan_phantoms(tmp_path_factory.mktemp("nnunet"), 501, "Tiny", 4, n_train=6, n_test=2, shape=(32, 40, 40))


@pytest.fixture
def nnunet_env(planned, monkeypatch):
    """Activate the planned dataset's environment in this process."""
    for k, v in planned["env"].items():
        monkeypatch.setenv(k, v)
    return planned


def run_command(args, env, timeout=900):
    """Run a console command (or ``python -m``) in a subprocess; fail with its output."""
    import subprocess

    proc = subprocess.run(args, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n"
                             f"STDERR:\n{proc.stderr[-4000:]}")
    return proc


def bin_path(name: str) -> str:
    """Path of a console script of the running interpreter's environment."""
    return str(Path(sys.executable).parent / name)


@pytest.fixture(scope="session")
def ssl_run(planned):
    """The real `nnUNetv2_train 501 3d_fullres all -tr nnUNetTrainerDeSD` on the tiny dataset."""
    env = planned["env"]
    run_command([bin_path("nnUNetv2_train"), "501", "3d_fullres", "all", "-tr", "nnUNetTrainerDeSD",
                 "-device", "cpu"], env)
    out = planned["root"] / "results" / "Dataset501_Tiny" / "nnUNetTrainerDeSD__nnUNetPlans__3d_fullres" / "fold_all"
    return {**planned, "output": out, "checkpoint": out / "checkpoint_final.pth"}


@pytest.fixture(scope="session")
def planned_two_channel(tmp_path_factory):
    """Dataset 502: phantoms with two channels, CT and its left-right mirror (a perfect
    contralateral image), brain-mask labels; planned like dataset 501."""
    import numpy as np
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    from nnunet_ssl.phantom import make_stroke_phantom, write_image
    from nnunet_ssl.planning import plan_and_preprocess

    root = tmp_path_factory.mktemp("nnunet2ch")
    env = nnunet_environment(root)
    folder = root / "raw" / "Dataset502_TwoChannel"
    for i in range(5):
        p = make_stroke_phantom((32, 40, 40), side="left" if i % 2 else "none", seed=100 + i)
        write_image(p.image, p.spacing, folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_image(np.ascontiguousarray(p.image[..., ::-1]), p.spacing, folder / "imagesTr" / f"case_{i:03d}_0001.nii.gz")
        write_image(p.brain.astype(np.uint8), p.spacing, folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    generate_dataset_json(str(folder), channel_names={0: "CT", 1: "CT"}, labels={"background": 0, "brain": 1},
                          num_training_cases=5, file_ending=".nii.gz")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        plan_and_preprocess(502, base_features=4, gpu_memory_gb=0.5, ssl_settings=TINY_SSL, num_processes=1)
    return {"root": root, "env": env}


SHORT_FOCAL_TVERSKY = '''
import torch
from nnunet_ssl.losses.trainers import nnUNetTrainerFocalTversky


class nnUNetTrainerFocalTversky_Demo(nnUNetTrainerFocalTversky):
    """1 epoch of 2 iterations; nnU-Net's final validation (loss-independent) skipped."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1, 2, 1

    def perform_actual_validation(self, save_probabilities=False):
        self.print_to_log_file("final validation skipped")
'''


def write_short_focal_tversky(folder: Path) -> None:
    """A short preset of the focal Tversky trainer (``nnUNetTrainerFocalTversky_Demo``) in ``folder``,
    for nnU-Net's trainer lookup through ``nnUNet_extTrainer``."""
    (folder / "short_focal_tversky.py").write_text(SHORT_FOCAL_TVERSKY, encoding="utf-8")
