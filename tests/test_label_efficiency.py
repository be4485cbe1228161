"""Label-efficiency benchmark: its settings, phantoms and experiment config, the budget trainer, the script.

The benchmark runs through ``nnunet-ssl experiment``, whose arms, statistics, resuming and
one real killed-and-resumed grid are tested in ``test_experiment.py``.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO, TRAINERS
from nnunet_ssl import label_efficiency as le
from nnunet_ssl.errors import UserError
from nnunet_ssl.experiment import parse_config, plan_summary
from nnunet_ssl.label_efficiency import BenchmarkConfig

BENCH = REPO / "bench" / "label_efficiency.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_label_efficiency", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_checks():
    with pytest.raises(UserError, match="exceeds the pool"):
        BenchmarkConfig(counts=(2, 4), scratch_counts=(14,), n_pool=10)
    with pytest.raises(UserError, match="counts"):
        BenchmarkConfig(counts=())
    assert BenchmarkConfig.from_dict(BenchmarkConfig().to_dict()) == BenchmarkConfig()


def test_scratch_near_tolerance():
    groups = {"mae-2": {"method": "mae", "n": 2}, "scratch-9": {"method": "scratch", "n": 9}}
    assert le.scratch_near({"groups": groups}) == {}  # 9 is more than 25 % away from 7
    groups["scratch-8"] = {"method": "scratch", "n": 8}
    assert le.scratch_near({"groups": groups}) == {2: 8}
    groups["scratch-7"] = {"method": "scratch", "n": 7}
    assert le.scratch_near({"groups": groups}) == {2: 7}


def test_phantoms_and_split_make_a_valid_experiment(tmp_path):
    config = BenchmarkConfig(counts=(1, 2), scratch_counts=(3,), seeds=(0, 1), n_pool=3, n_val=1, n_unlabelled=1,
                             n_test=2, shape=(16, 24, 24))
    le.write_data(tmp_path / "data", config)
    target = tmp_path / "data" / "nnUNet_raw" / f"Dataset{le.TARGET_ID}_{le.TARGET_NAME}"
    assert not (target / "imagesTs").exists()
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == [
        f"{c}.nii.gz" for c in sorted(le.case_ids(config)["pool"] + le.case_ids(config)["val"] +
                                      le.case_ids(config)["test"])]
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 6
    ssl = tmp_path / "data" / "nnUNet_raw" / f"Dataset{le.SSL_ID}_{le.SSL_NAME}" / "imagesTr"
    assert len(list(ssl.iterdir())) == 5  # pool + validation + unlabelled, no test image
    values = le.experiment_config(config, tmp_path / "data")
    assert values["methods"]["scratch"]["counts"] == [1, 2, 3] and values["methods"]["desd"]["counts"] == [1, 2]
    text = plan_summary(parse_config(values, base=tmp_path))
    assert "3 labelled pool, 1 validation, 2 test" in text and "10 arms in 6 folds" in text


# ---------------------------------------------------------------- the trainer and the script
def test_budget_trainer_reads_budget_and_seeds(nnunet_env, monkeypatch):
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    monkeypatch.syspath_prepend(str(TRAINERS))
    from nnUNetTrainerBudget import nnUNetTrainerBudget

    pre = nnunet_env["root"] / "preprocessed" / "Dataset501_Tiny"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["configurations"]["3d_fullres_budget"] = {
        "inherits_from": "3d_fullres",
        "budget": {"num_epochs": 3, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 2,
                   "fold_seeds": [11, 12]}}
    dataset_json = json.loads((pre / "dataset.json").read_text())

    def make(fold):  # nnU-Net's run_training adds continue_training, and the trainer pops it
        return nnUNetTrainerBudget(dict(plans, continue_training=False), "3d_fullres_budget", fold, dataset_json,
                                   torch.device("cpu"))

    draws = []
    for fold in (1, 1, 0):
        trainer = make(fold)
        draws.append(torch.rand(3))
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (3, 4, 2)
    assert trainer.budget_seed == 11 and trainer.final_validation
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    # the configuration is the stock one otherwise
    manager = PlansManager(plans)
    budget_cm, stock_cm = manager.get_configuration("3d_fullres_budget"), manager.get_configuration("3d_fullres")
    assert budget_cm.patch_size == stock_cm.patch_size and budget_cm.data_identifier == stock_cm.data_identifier
    plans["configurations"]["3d_fullres_budget"]["budget"]["final_validation"] = False
    assert not make(0).final_validation
    plans["configurations"]["3d_fullres_budget"]["budget"]["epochs"] = 1
    with pytest.raises(ValueError, match="unknown budget"):
        make(0)


def test_script_ssl_settings_and_errors(tmp_path):
    bench = _bench_module()
    assert bench.ssl_settings(None)["batch_size"] == 4
    merged = bench.ssl_settings('{"num_epochs": 3}')
    assert merged["num_epochs"] == 3 and merged["batch_size"] == 4
    f = tmp_path / "ssl.json"
    f.write_text('{"lr": 0.5}')
    assert bench.ssl_settings(str(f))["lr"] == 0.5
    with pytest.raises(UserError, match="JSON"):
        bench.ssl_settings("{nope")
    proc = subprocess.run([sys.executable, str(BENCH), "-o", str(tmp_path / "x"), "--counts", "20"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("label_efficiency: error: the largest label count")
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- the SSL methods
def test_pretext_settings_are_checked_per_trainer_and_take_the_ssl_run_length():
    mae = "nnUNetTrainerMAE"
    config = BenchmarkConfig(ssl={"num_epochs": 3, "num_iterations_per_epoch": 5, "batch_size": 2},
                             ssl_trainers=[mae, "nnUNetTrainerModelsGenesis"],
                             pretext={mae: {"mask_ratio": 0.5, "num_epochs": 4}})
    assert config.methods == ["mae", "modelsgenesis"] and config.whole_network(mae)
    assert le.pretext_block(config, mae) == {"num_epochs": 4, "num_iterations_per_epoch": 5, "mask_ratio": 0.5}
    # a trainer without an entry takes its defaults and the run length of ssl, not DeSD's other settings
    assert le.pretext_block(config, "nnUNetTrainerModelsGenesis") == {"num_epochs": 3, "num_iterations_per_epoch": 5}
    with pytest.raises(UserError, match="'mask_ratoi'"):
        BenchmarkConfig(ssl_trainers=[mae], pretext={mae: {"mask_ratoi": 0.5}})
    with pytest.raises(UserError, match="'block_size'"):
        BenchmarkConfig(ssl_trainers=[mae], pretext={mae: {"block_size": "8"}})
    with pytest.raises(UserError, match="per SSL trainer other than nnUNetTrainerDeSD .*got 'mask_ratio'"):
        BenchmarkConfig(ssl_trainers=[mae], pretext={"mask_ratio": 0.5})
    with pytest.raises(UserError, match="got 'nnUNetTrainerDeSD'"):
        BenchmarkConfig(pretext={"nnUNetTrainerDeSD": {}})
    with pytest.raises(UserError, match="each SSL trainer once"):
        BenchmarkConfig(ssl_trainers=[mae, mae])
    with pytest.raises(UserError, match="unknown ssl_rotation setting"):
        BenchmarkConfig(ssl_trainers=["nnUNetTrainerRotation"], pretext={"nnUNetTrainerRotation": {"mask_ratio": 0.5}})
    with pytest.raises(UserError, match="not an SSL trainer of nnunet-ssl"):
        BenchmarkConfig(ssl_trainers=["nnUNetTrainerNoSuch"])


def test_every_trainer_is_one_method_of_the_experiment(tmp_path):
    mae, moco = "nnUNetTrainerMAE", "nnUNetTrainerMoCo"
    config = BenchmarkConfig(counts=(1,), scratch_counts=(2,), seeds=(0,), n_pool=2, n_val=1, n_unlabelled=1,
                             n_test=1, shape=(16, 24, 24), ssl={"num_epochs": 2},
                             ssl_trainers=["nnUNetTrainerDeSD", mae, moco], pretext={mae: {"mask_ratio": 0.5}})
    methods = le.experiment_config(config, tmp_path)["methods"]
    assert list(methods) == ["scratch", "desd", "mae", "moco"] and methods["scratch"] == {"counts": [1, 2]}
    assert methods["mae"] == {"trainer": mae, "pool": "ssl", "counts": [1], "transfer": "whole",
                              "settings": {"num_epochs": 2, "mask_ratio": 0.5}}
    # DeSD (its ssl settings) and MoCo (no decoder) transfer the encoder through nnunet-ssl-transfer
    assert "transfer" not in methods["desd"] and methods["desd"]["settings"] == {"num_epochs": 2}
    assert "transfer" not in methods["moco"] and methods["moco"]["settings"] == {"num_epochs": 2}
    # the experiment accepts the config: one pretraining per method, scratch arms at both counts
    le.write_data(tmp_path / "data", config)
    text = plan_summary(parse_config(le.experiment_config(config, tmp_path / "data"), base=tmp_path))
    assert "5 arms" in text, text


def test_script_trainers_and_pretext_option(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "-o", str(tmp_path / "x"), "--ssl-trainer",
                           "nnUNetTrainerMAE", "--pretext", '{"nnUNetTrainerMAE": {"mask_ratoi": 0.5}}'],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "label_efficiency: error: unknown ssl_mae setting(s) ['mask_ratoi']" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()
    assert _bench_module().json_object('{"block_size": 8}', "--pretext") == {"block_size": 8}


def test_acquisition_variation_of_the_phantoms():
    """--variation: the anatomy and lesion of a case stay (rotated together with the image), while
    offset, field, noise and pose differ from case to case; without it the phantoms are as before."""
    import numpy as np
    from scipy import ndimage

    from nnunet_ssl.phantom import make_stroke_phantom

    shape = (24, 40, 40)
    plain = make_stroke_phantom(shape, seed=3, lesion_drop_hu=20.0)
    assert np.array_equal(plain.image, make_stroke_phantom(shape, seed=3, lesion_drop_hu=20.0, variation=False).image)
    offsets, noise, turned = [], [], []
    for seed in range(4):
        p = make_stroke_phantom(shape, seed=seed, lesion_drop_hu=20.0, variation=True)
        q = make_stroke_phantom(shape, seed=seed, lesion_drop_hu=20.0)
        assert abs(int(p.lesion.sum()) - int(q.lesion.sum())) <= 0.1 * q.lesion.sum()  # the same lesion, turned
        turned.append(not np.array_equal(p.lesion, q.lesion))  # ... by an in-plane rotation
        inner = ndimage.binary_erosion(p.brain, iterations=2) & ~ndimage.binary_dilation(p.lesion, iterations=2)
        core = ndimage.binary_erosion(p.lesion)
        assert np.median(p.image[inner]) - np.median(p.image[core]) > 10  # still a hypodense lesion
        offsets.append(np.median(p.image[inner]) - np.median(q.image[ndimage.binary_erosion(q.brain, iterations=2)]))
        flat = p.image[inner] - ndimage.gaussian_filter(p.image, 2.0)[inner]
        noise.append(np.std(flat))
    assert sum(turned) >= 3 and np.ptp(offsets) > 2.0 and np.ptp(noise) > 0.5  # acquisitions differ between cases


def test_a_rerun_may_add_or_drop_methods_but_not_change_the_budget(tmp_path):
    from nnunet_ssl.experiment import open_results

    mae, genesis = "nnUNetTrainerMAE", "nnUNetTrainerModelsGenesis"
    first = BenchmarkConfig(ssl_trainers=[mae, genesis])
    kwargs = dict(fmt=le.FORMAT, extendable=le.EXTENDABLE, entries=le.ENTRIES, defaults=BenchmarkConfig().to_dict())
    open_results(tmp_path, first.to_dict(), False, **kwargs)
    fewer = BenchmarkConfig(ssl_trainers=[mae], seeds=(0, 1, 2, 3), pretext={mae: {"mask_ratio": 0.7}})
    assert open_results(tmp_path, fewer.to_dict(), False, **kwargs)["config"]["ssl_trainers"] == [mae]
    # a record written before a setting existed continues under that setting's default
    record = tmp_path / "results.json"
    recorded = json.loads(record.read_text())
    del recorded["config"]["variation"]
    record.write_text(json.dumps(recorded))
    assert open_results(tmp_path, fewer.to_dict(), False, **kwargs)["config"]["variation"] is False
    with pytest.raises(UserError, match=r"other settings \(epochs\)"):
        open_results(tmp_path, BenchmarkConfig(ssl_trainers=[mae], epochs=3).to_dict(), False, **kwargs)
