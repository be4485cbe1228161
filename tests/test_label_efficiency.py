"""Label-efficiency benchmark: subsets, folds, budget, results maths, resuming, plot; one real tiny run."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TRAINERS
from nnunet_ssl import label_efficiency as le
from nnunet_ssl.errors import UserError
from nnunet_ssl.label_efficiency import (
    Arm, BenchmarkConfig, fold_seed, folds, format_table, labelled_subsets, open_results, plan_arms, plot,
    summarise)

BENCH = REPO / "bench" / "label_efficiency.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_label_efficiency", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- subsets and folds
def test_subsets_are_seeded_nested_and_independent_of_other_counts():
    pool = [f"case_{i:03d}" for i in range(14)]
    a = labelled_subsets(pool, [2, 4, 7, 14], seed=0)
    assert a == labelled_subsets(pool, [2, 4, 7, 14], seed=0)
    assert a[2] == a[4][:2] and a[4] == a[7][:4] and sorted(a[14]) == pool
    assert labelled_subsets(pool, [4], seed=0)[4] == a[4]  # the other counts change nothing
    assert labelled_subsets(pool, [4], seed=1)[4] != a[4]
    with pytest.raises(UserError, match="cannot be drawn"):
        labelled_subsets(pool, [15], seed=0)


def test_first_case_of_every_subset_has_a_lesion():
    pool = [f"c{i}" for i in range(8)]
    for seed in range(20):
        assert labelled_subsets(pool, [1, 3], seed, with_lesion=["c5"])[1] == ["c5"]
    with pytest.raises(UserError, match="no case"):
        labelled_subsets(pool, [1], 0, with_lesion=[])


def test_arms_are_paired_and_folds_written():
    config = BenchmarkConfig(counts=(2, 4), scratch_counts=(7,), seeds=(0, 1), n_pool=8)
    arms = plan_arms(config)
    assert [a.key for a in arms[:5]] == ["scratch-2/seed0", "ssl-2/seed0", "scratch-4/seed0", "ssl-4/seed0",
                                         "scratch-7/seed0"]
    assert len(arms) == 10 and not any(a.kind == "ssl" and a.n == 7 for a in arms)
    by_key = {a.key: a for a in arms}
    for n in (2, 4):
        for s in (0, 1):
            ssl, scratch = by_key[f"ssl-{n}/seed{s}"], by_key[f"scratch-{n}/seed{s}"]
            assert ssl.train == scratch.train and ssl.fold == scratch.fold
    splits = folds(arms, ["case_008"])
    assert len(splits) == 6  # one fold per (n, seed)
    for arm in arms:
        assert splits[arm.fold] == {"train": list(arm.train), "val": ["case_008"]}
    with pytest.raises(ValueError, match="different training cases"):
        folds([Arm("ssl", 1, 0, 0, ("a",)), Arm("scratch", 1, 0, 0, ("b",))], ["v"])
    with pytest.raises(ValueError, match="validation cases"):
        folds([Arm("ssl", 1, 0, 0, ("v",))], ["v"])


def test_config_checks():
    with pytest.raises(UserError, match="exceeds the pool"):
        BenchmarkConfig(counts=(2, 4), scratch_counts=(14,), n_pool=10)
    with pytest.raises(UserError, match="counts"):
        BenchmarkConfig(counts=())
    assert BenchmarkConfig.from_dict(BenchmarkConfig().to_dict()) == BenchmarkConfig()


# ---------------------------------------------------------------- results maths
def _record(kind, n, seed, dice):
    return {"kind": kind, "n": n, "seed": seed, "dice_mean": dice, "train_cases": []}


HAND = {"arms": {
    "scratch-2/seed0": _record("scratch", 2, 0, 0.20), "ssl-2/seed0": _record("ssl", 2, 0, 0.50),
    "scratch-2/seed1": _record("scratch", 2, 1, 0.40), "ssl-2/seed1": _record("ssl", 2, 1, 0.30),
    "scratch-2/seed2": _record("scratch", 2, 2, 0.30), "ssl-2/seed2": _record("ssl", 2, 2, 0.60),
    "scratch-4/seed0": _record("scratch", 4, 0, 0.50),  # its ssl arm has not finished
    "scratch-7/seed0": _record("scratch", 7, 0, 0.55), "scratch-7/seed1": _record("scratch", 7, 1, 0.65),
    "scratch-14/seed0": _record("scratch", 14, 0, 0.80),
}}


def test_summary_statistics_and_paired_differences():
    s = summarise(HAND)
    assert list(s["arms"]) == ["scratch-2", "scratch-4", "scratch-7", "scratch-14", "ssl-2"]
    assert s["arms"]["ssl-2"]["dice"] == {0: 0.5, 1: 0.3, 2: 0.6}
    assert s["arms"]["ssl-2"]["mean"] == pytest.approx(1.4 / 3)
    assert s["arms"]["ssl-2"]["median"] == pytest.approx(0.5)
    assert s["arms"]["scratch-7"]["median"] == pytest.approx(0.6)
    paired = s["paired"][2]
    assert paired["per_seed"] == pytest.approx({0: 0.3, 1: -0.1, 2: 0.3})
    assert paired["mean"] == pytest.approx(0.5 / 3) and paired["median"] == pytest.approx(0.3)
    assert 4 not in s["paired"]  # no ssl-4 result: no difference
    assert s["scratch_near"] == {2: 7}  # 3.5 * 2 = 7; 14 is 3.5 * 4 but there is no ssl-4
    table = format_table(s)
    assert "ssl-2" in table and "+0.167" in table and "scratch-7 0.600" in table


def test_scratch_near_tolerance():
    r = {"arms": {"ssl-2/seed0": _record("ssl", 2, 0, 0.5), "scratch-9/seed0": _record("scratch", 9, 0, 0.5)}}
    assert summarise(r)["scratch_near"] == {}  # 9 is more than 25 % away from 7
    r["arms"]["scratch-8/seed0"] = _record("scratch", 8, 0, 0.5)
    assert summarise(r)["scratch_near"] == {2: 8}


def test_plot_written(tmp_path):
    path = plot(summarise(HAND), tmp_path / "le.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


# ---------------------------------------------------------------- results file and resuming
def test_open_results_refuses_other_runs_and_force_removes_only_its_entries(tmp_path):
    config = BenchmarkConfig(counts=(1, 2), scratch_counts=(), seeds=(0,), n_pool=2)
    out = tmp_path / "run"
    results = open_results(out, config, force=False)
    assert json.loads((out / "results.json").read_text())["config"] == config.to_dict() == results["config"]
    # same settings, or only more seeds/counts: continued
    open_results(out, config, force=False)
    open_results(out, BenchmarkConfig(counts=(1, 2), scratch_counts=(), seeds=(0, 1), n_pool=2), force=False)
    with pytest.raises(UserError, match=r"other settings \(epochs\)"):
        open_results(out, BenchmarkConfig(counts=(1, 2), scratch_counts=(), seeds=(0,), n_pool=2, epochs=3), False)
    (out / "mine.txt").write_text("keep")
    (out / "arms").mkdir()
    open_results(out, BenchmarkConfig(counts=(1, 2), scratch_counts=(), seeds=(0,), n_pool=2, epochs=3), True)
    assert (out / "mine.txt").read_text() == "keep" and not (out / "arms").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("")
    with pytest.raises(UserError, match="not empty"):
        open_results(other, config, force=False)


def _fake_finished_stages(out: Path, config: BenchmarkConfig) -> None:
    """The folders a run has after planning: the target labels and plans (what the arm loop reads)."""
    import SimpleITK as sitk

    raw = out / "nnUNet_raw" / f"Dataset{le.TARGET_ID}_{le.TARGET_NAME}" / "labelsTr"
    raw.mkdir(parents=True)
    for i, case in enumerate(le.case_ids(config)["pool"]):
        label = np.zeros((4, 4, 4), np.uint8)
        label[0, 0, 0] = i % 2  # every other case has a lesion
        sitk.WriteImage(sitk.GetImageFromArray(label), str(raw / f"{case}.nii.gz"))
    pre = out / "nnUNet_preprocessed" / f"Dataset{le.TARGET_ID}_{le.TARGET_NAME}"
    pre.mkdir(parents=True)
    (pre / f"{le.target_plans_name()}.json").write_text(json.dumps({"configurations": {"3d_fullres": {}}}))


def test_rerun_skips_recorded_stages_and_arms(tmp_path, monkeypatch):
    config = BenchmarkConfig(counts=(1, 2), scratch_counts=(3,), seeds=(0,), n_pool=4, epochs=2, iterations=3)
    out = tmp_path / "run"
    results = open_results(out, config, force=False)
    _fake_finished_stages(out, config)
    arms = plan_arms(config, ["case_001", "case_003"])
    done = {a.key: {**_record(a.kind, a.n, a.seed, 0.1 * a.n), "train_cases": list(a.train), "finished": "earlier"}
            for a in arms[:2]}
    results["stages"] = {k: {"elapsed_s": 1.0} for k in ("data", "plan", "pretrain", "transfer")}
    results["arms"] = done
    le.write_json_atomic(out / "results.json", results)

    ran = []

    def fake_arm(arm, *args):
        ran.append(arm.key)
        return {"kind": arm.kind, "n": arm.n, "seed": arm.seed, "train_cases": list(arm.train), "dice_mean": 0.5,
                "dice_median": 0.5, "dice_per_case": {}, "finished": "now"}

    monkeypatch.setattr(le, "_run_arm", fake_arm)
    monkeypatch.setattr(le.Runner, "command", lambda *a, **k: pytest.fail("a recorded stage ran a command"))
    lines = []
    summary = le.run_benchmark(out, config, echo=lines.append)
    assert ran == [a.key for a in arms[2:]] == ["scratch-2/seed0", "ssl-2/seed0", "scratch-3/seed0"]
    saved = json.loads((out / "results.json").read_text())
    assert all(saved["arms"][k] == v for k, v in done.items())  # recorded arms untouched
    assert set(saved["arms"]) == {a.key for a in arms}
    assert summary["paired"][1]["per_seed"] == {0: 0.0}
    assert sum("skipped" in line for line in lines) == 4
    assert (out / "label_efficiency.png").is_file()
    # the folds and the budget the stock trainer reads
    pre = out / "nnUNet_preprocessed" / f"Dataset{le.TARGET_ID}_{le.TARGET_NAME}"
    splits = json.loads((pre / "splits_final.json").read_text())
    assert [s["train"] for s in splits] == [list(arms[0].train), list(arms[2].train), list(arms[4].train)]
    assert all(s["val"] == ["case_004", "case_005"] for s in splits)  # n_val = 2 after the pool
    budget = json.loads((pre / f"{le.target_plans_name()}.json").read_text())["configurations"][le.BUDGET_CONFIGURATION]
    assert budget == {"inherits_from": "3d_fullres", "budget": {
        "num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 5,
        "final_validation": False, "fold_seeds": [fold_seed(1, 0), fold_seed(2, 0), fold_seed(3, 0)]}}
    # a third run has nothing left to do
    ran.clear()
    le.run_benchmark(out, config, echo=lines.append)
    assert ran == []


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


# ---------------------------------------------------------------- one real run, killed and continued
TINY_ARGS = ["--counts", "1", "--scratch-counts", "--seeds", "0", "--n-labelled", "2", "--n-val", "1",
             "--n-unlabelled", "1", "--n-test", "1", "--shape", "32", "40", "40", "--epochs", "1", "--iterations",
             "2", "--val-iterations", "1", "--device", "cpu", "--ssl", json.dumps({
                 "num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1,
                 "batch_size": 2, "view_size": [16, 32, 32], "slab_depth": 24, "out_dim": 256, "hidden_dim": 64,
                 "bottleneck_dim": 32, "warmup_epochs": 0, "warmup_teacher_temp_epochs": 0,
                 "monitor_warmup_epochs": 0})]


@pytest.mark.slow
def test_tiny_benchmark_killed_and_continued(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.pop(k, None)  # the benchmark must set its own
    args = [sys.executable, str(BENCH), "-o", str(out), *TINY_ARGS]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    results_file = out / "results.json"
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if results_file.is_file() and json.loads(results_file.read_text()).get("arms"):
                break
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run, nnU-Net's commands included
        proc.wait()
    first = json.loads(results_file.read_text())
    assert len(first["arms"]) == 1 and set(first["stages"]) == {"data", "plan", "pretrain", "transfer"}

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert rerun.stdout.count("recorded by an earlier run, skipped") == 4
    assert "2 arms: 1 recorded, 1 to run" in rerun.stdout
    results = json.loads(results_file.read_text())
    assert results["format"] == le.FORMAT and results["config"]["counts"] == [1]
    assert set(results["arms"]) == {"scratch-1/seed0", "ssl-1/seed0"}
    key = next(iter(first["arms"]))
    assert results["arms"][key] == first["arms"][key]  # reused, not run again
    for record in results["arms"].values():
        assert {"kind", "n", "seed", "fold", "train_cases", "dice_mean", "dice_median", "dice_per_case",
                "elapsed_s"} <= set(record)
        assert 0.0 <= record["dice_mean"] <= 1.0 and list(record["dice_per_case"]) == ["case_10000"]
    assert results["arms"]["ssl-1/seed0"]["train_cases"] == results["arms"]["scratch-1/seed0"]["train_cases"]
    assert set(results["summary"]["paired"]) == {"1"}
    assert (out / "label_efficiency.png").is_file() and "paired ssl - scratch" in rerun.stdout
    log = next((out / "arms" / "ssl-1_seed0" / "nnUNet_results").rglob("training_log_*.txt")).read_text()
    assert "nnUNetTrainerBudget: 1 epochs x 2 iterations" in log and "final validation skipped" in log


# ---------------------------------------------------------------- masked image modelling as the SSL method
def test_mae_settings_are_checked_and_take_the_ssl_run_length():
    config = BenchmarkConfig(ssl={"num_epochs": 3, "num_iterations_per_epoch": 5, "batch_size": 2},
                             ssl_trainer="nnUNetTrainerMAE", pretext={"mask_ratio": 0.5, "num_epochs": 4})
    assert config.whole_network and not BenchmarkConfig().whole_network
    assert le.pretext_block(config) == {"num_epochs": 4, "num_iterations_per_epoch": 5, "mask_ratio": 0.5}
    with pytest.raises(UserError, match="'mask_ratoi'"):
        BenchmarkConfig(ssl_trainer="nnUNetTrainerMAE", pretext={"mask_ratoi": 0.5})
    with pytest.raises(UserError, match="'block_size'"):
        BenchmarkConfig(ssl_trainer="nnUNetTrainerMAE", pretext={"block_size": "8"})
    with pytest.raises(UserError, match="apply to --ssl-trainer nnUNetTrainerMAE or"):
        BenchmarkConfig(pretext={"mask_ratio": 0.5})
    # every pretext trainer: its own block, checked by its own settings
    genesis = BenchmarkConfig(ssl={"num_epochs": 3}, ssl_trainer="nnUNetTrainerModelsGenesis")
    assert genesis.whole_network and le.pretext_settings_class(genesis.ssl_trainer).BLOCK == "ssl_genesis"
    with pytest.raises(UserError, match="unknown ssl_rotation setting"):
        BenchmarkConfig(ssl_trainer="nnUNetTrainerRotation", pretext={"mask_ratio": 0.5})


def test_mae_run_pretrains_without_transfer_and_finetunes_from_its_checkpoint(tmp_path, monkeypatch):
    config = BenchmarkConfig(counts=(1,), scratch_counts=(), seeds=(0,), n_pool=2, ssl={"num_epochs": 2},
                             ssl_trainer="nnUNetTrainerMAE", pretext={"mask_ratio": 0.5})
    out = tmp_path / "run"
    results = open_results(out, config, force=False)
    _fake_finished_stages(out, config)
    ssl_plans = out / "nnUNet_preprocessed" / f"Dataset{le.SSL_ID}_{le.SSL_NAME}" / "nnUNetPlans.json"
    ssl_plans.parent.mkdir(parents=True)
    ssl_plans.write_text(json.dumps({"configurations": {"3d_fullres": {"ssl": {"num_epochs": 2}}}}))
    results["stages"] = {k: {"elapsed_s": 1.0} for k in ("data", "plan")}
    le.write_json_atomic(out / "results.json", results)
    commands, weights = [], []
    monkeypatch.setattr(le.Runner, "command", lambda self, args, name, **k: commands.append((name, args)))

    def fake_arm(arm, output, env, echo, c, plans, w, target_raw):
        weights.append((arm.kind, w))
        return {"kind": arm.kind, "n": arm.n, "seed": arm.seed, "train_cases": list(arm.train), "dice_mean": 0.5,
                "dice_median": 0.5, "dice_per_case": {}, "finished": "now"}

    monkeypatch.setattr(le, "_run_arm", fake_arm)
    le.run_benchmark(out, config, echo=lambda line: None)
    assert [name for name, _ in commands] == ["pretrain"]  # no nnunet-ssl-transfer
    assert commands[0][1][commands[0][1].index("-tr") + 1] == "nnUNetTrainerMAE"
    block = json.loads(ssl_plans.read_text())["configurations"]["3d_fullres"]["ssl_mae"]
    assert block == {"num_epochs": 2, "mask_ratio": 0.5}
    checkpoint = (out / "nnUNet_results" / f"Dataset{le.SSL_ID}_{le.SSL_NAME}" /
                  "nnUNetTrainerMAE__nnUNetPlans__3d_fullres" / "fold_all" / "checkpoint_final.pth")
    assert ("ssl", checkpoint) in weights
    assert "transfer" not in json.loads((out / "results.json").read_text())["stages"]


def test_script_mae_option(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "-o", str(tmp_path / "x"), "--ssl-trainer",
                           "nnUNetTrainerMAE", "--pretext", '{"mask_ratoi": 0.5}'], capture_output=True, text=True)
    assert proc.returncode == 2 and "label_efficiency: error: unknown ssl_mae setting(s) ['mask_ratoi']" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _bench_module().json_object('{"block_size": 8}', "--pretext") == {"block_size": 8}
