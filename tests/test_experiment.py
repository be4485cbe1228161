"""``nnunet-ssl experiment``: config checks, arms, statistics, scheduling and one real grid killed and resumed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nnunet_ssl import experiment as ex
from nnunet_ssl.errors import UserError

REPO = Path(__file__).resolve().parents[1]
NNUNET_SSL = str(Path(sys.executable).parent / "nnunet-ssl")
TINY_DESD = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1, "batch_size": 2,
             "view_size": [16, 32, 32], "slab_depth": 24, "out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32,
             "warmup_epochs": 0, "warmup_teacher_temp_epochs": 0, "monitor_warmup_epochs": 0}


def _config(**changes) -> dict:
    config = {"target": "602", "pools": {"ssl": "601"}, "nnUNet_raw": "raw",
              "methods": {"scratch": {}, "desd": {"trainer": "nnUNetTrainerDeSD", "settings": {"out_dim": 256}}},
              "counts": [1, 2], "seeds": [0, 1], "device": "cpu"}
    config.update(changes)
    return config


# ---------------------------------------------------------------- the config
@pytest.mark.parametrize("changes, field", [
    ({"cuonts": [1]}, "cuonts"),
    ({"counts": []}, "counts"),
    ({"counts": [0, 2]}, "counts"),
    ({"counts": [2, "most"]}, "counts"),
    ({"counts": [2, 2]}, "counts"),
    ({"seeds": [-1]}, "seeds"),
    ({"target": True}, "target"),
    ({"methods": {"desd": {"trainer": "nnUNetTrainerDeSD"}}}, "methods"),
    ({"methods": {"scratch": {"trainer": "nnUNetTrainerDeSD"}}}, "methods.scratch.trainer"),
    ({"methods": {"scratch": {}, "desd": {}}}, "methods.desd.trainer"),
    ({"methods": {"scratch": {}, "desd": {"trainer": "nnUNetTrainerDeSD", "pool": "most"}}}, "methods.desd.pool"),
    ({"methods": {"scratch": {}, "desd": {"trainer": "nnUNetTrainerDeSD", "tranfser": "whole"}}},
     "methods.desd.tranfser"),
    ({"methods": {"scratch": {}, "desd": {"trainer": "nnUNetTrainerDeSD", "transfer": "all"}}},
     "methods.desd.transfer"),
    ({"methods": {"scratch": {}, "de sd": {"trainer": "nnUNetTrainerDeSD"}}}, "methods.de sd"),
    ({"finetune": {"epochs": 0}}, "finetune.epochs"),
    ({"finetune": {"epoch": 5}}, "finetune.epoch"),
    ({"finetune": {"settings": [1]}}, "finetune.settings"),
    ({"plan": {"base_features": 8.5}}, "plan.base_features"),
    ({"plan": {"planner": "huge"}}, "plan.planner"),
    ({"configuration": "3d_lowres"}, "configuration"),
    ({"min_lesion_ml": -1}, "min_lesion_ml"),
    ({"ensemble": True, "seeds": [0]}, "ensemble"),
    ({"device": "tpu"}, "device"),
    ({"gpus": [0, 1]}, "gpus"),
    ({"label": 0}, "label"),
])
def test_bad_fields_are_refused_by_name(changes, field):
    with pytest.raises(UserError, match=rf"^config field '{field}'"):
        ex.parse_config(_config(**changes), environ={})


def test_config_defaults_and_paths(tmp_path):
    c = ex.parse_config(_config(split="pre/Dataset602_T"), base=tmp_path, environ={})
    assert c.nnunet_raw == tmp_path / "raw" and c.split == tmp_path / "pre" / "Dataset602_T"
    assert c.methods["desd"].pool == "ssl" and c.methods["desd"].transfer == "encoder"
    assert c.finetune == {"epochs": 1000, "iterations": 250, "val_iterations": 50, "final_validation": False,
                          "trainer": "nnUNetTrainerBudget", "settings": {}}
    assert c.configuration == "3d_fullres" and c.label == 1 and c.gpus == () and not c.ensemble
    with pytest.raises(UserError, match="'nnUNet_raw'"):
        ex.parse_config({k: v for k, v in _config().items() if k != "nnUNet_raw"}, environ={})
    assert ex.parse_config({k: v for k, v in _config().items() if k != "nnUNet_raw"},
                           environ={"nnUNet_raw": "/data"}).nnunet_raw == Path("/data")


def test_trainer_settings_are_checked_before_any_work():
    for name, trainer in (("desd", "nnUNetTrainerDeSD"), ("mae", "nnUNetTrainerMAE")):
        ex.check_methods(ex.parse_config(_config(methods={"scratch": {}, name: {"trainer": trainer}}), environ={}))
    assert ex.settings_block("nnUNetTrainerDeSD_SA") == "ssl" and ex.settings_block("nnUNetTrainerMoCo") == "ssl_moco"
    cases = [({"trainer": "nnUNetTrainerDeSD", "settings": {"out_dimm": 4}}, "methods.x.settings", "out_dimm"),
             ({"trainer": "nnUNetTrainerMAE", "settings": {"mask_ratio": "high"}}, "methods.x.settings", "mask_ratio"),
             ({"trainer": "nnUNetTrainerNope"}, "methods.x.trainer", "not an SSL trainer"),
             ({"trainer": "nnUNetTrainerDeSD", "transfer": "whole"}, "methods.x.transfer", "no decoder")]
    for spec, field, words in cases:
        config = ex.parse_config(_config(methods={"scratch": {}, "x": spec}), environ={})
        with pytest.raises(UserError, match=rf"^config field '{field}'.*{words}"):
            ex.check_methods(config)


def test_finetuning_strategy_is_checked():
    ok = ex.parse_config(_config(finetune={"trainer": "nnUNetTrainerUnfreezeAtN", "settings": {"unfreeze_epoch": 5}}),
                         environ={})
    ex.check_finetune(ok)
    ex.check_finetune(ex.parse_config(_config(), environ={}))
    for finetune, words in (({"trainer": "nnUNetTrainerNope"}, "not nnUNetTrainerBudget or one of"),
                            ({"settings": {"unfreeze_epoch": 5}}, "reads no finetune block"),
                            ({"trainer": "nnUNetTrainerUnfreezeAtN", "settings": {"num_epochs": 5}}, "num_epochs"),
                            ({"trainer": "nnUNetTrainerWarmup", "settings": {"warmup": 5}}, "warmup")):
        with pytest.raises(UserError, match=rf"^config field 'finetune\.(trainer|settings)'.*{words}"):
            ex.check_finetune(ex.parse_config(_config(finetune=finetune), environ={}))


def test_cli_refuses_a_bad_config_before_writing_anything(tmp_path):
    config = tmp_path / "experiment.json"
    config.write_text(json.dumps(_config(counts=[1, "many"])))
    out = tmp_path / "out"
    proc = subprocess.run([NNUNET_SSL, "experiment", str(config), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "config field 'counts'" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
    config.write_text("{not json")
    proc = subprocess.run([NNUNET_SSL, "experiment", str(config), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr and not out.exists()


# ---------------------------------------------------------------- subsets, arms and folds
def test_arms_are_paired_nested_and_counts_per_method():
    pool = [f"case_{i:03d}" for i in range(8)]
    config = ex.parse_config(_config(methods={"scratch": {"counts": [2, 4, "all"]}, "desd": {
        "trainer": "nnUNetTrainerDeSD"}}, counts=[2, 4], seeds=[3, 5]), environ={})
    arms = ex.plan_arms(config, pool, with_lesion=["case_006"])
    assert [a.key for a in arms[:5]] == ["scratch-2/seed3", "desd-2/seed3", "scratch-4/seed3", "desd-4/seed3",
                                         "scratch-8/seed3"]
    assert len(arms) == 10
    by_key = {a.key: a for a in arms}
    for seed in (3, 5):
        two, four = by_key[f"desd-2/seed{seed}"], by_key[f"desd-4/seed{seed}"]
        assert two.train == by_key[f"scratch-2/seed{seed}"].train and two.fold == by_key[f"scratch-2/seed{seed}"].fold
        assert four.train[:2] == two.train and two.train[0] == "case_006"  # nested; a lesion case first
        assert sorted(by_key[f"scratch-8/seed{seed}"].train) == pool
    assert by_key["desd-2/seed3"].train != by_key["desd-2/seed5"].train
    splits = ex.folds(arms, ["case_v"])
    assert len(splits) == 6 and all(s["val"] == ["case_v"] for s in splits)
    with pytest.raises(UserError, match="'counts'.*9 labelled cases"):
        ex.plan_arms(ex.parse_config(_config(counts=[9]), environ={}), pool)


# ---------------------------------------------------------------- statistics
def _record(method, n, seed, per_case):
    return {"method": method, "n": n, "seed": seed, "dice_mean": float(np.mean(list(per_case.values()))),
            "dice_per_case": per_case, "filtered": {"dice_mean": 1.0, "dice_per_case": {}}}


def test_summary_pairs_seeds_and_cases_and_adjusts_p():
    from scipy import stats

    scratch = {0: {"a": 0.2, "b": 0.4}, 1: {"a": 0.1, "b": 0.3}}
    ssl = {0: {"a": 0.5, "b": 0.6}, 1: {"a": 0.3, "b": 0.2}}
    records = {}
    for seed in (0, 1):
        records[f"scratch-2/seed{seed}"] = _record("scratch", 2, seed, scratch[seed])
        records[f"desd-2/seed{seed}"] = _record("desd", 2, seed, ssl[seed])
        records[f"mae-2/seed{seed}"] = _record("mae", 2, seed, {k: v + 0.05 for k, v in scratch[seed].items()})
    records["desd-4/seed0"] = _record("desd", 4, 0, {"a": 0.9})  # no scratch-4: no pair
    s = ex.summarise(records)
    assert list(s["groups"]) == ["scratch-2", "desd-2", "desd-4", "mae-2"]
    assert s["groups"]["desd-2"]["dice"] == {0: pytest.approx(0.55), 1: pytest.approx(0.25)}
    assert s["groups"]["desd-2"]["sd"] == pytest.approx(np.std([0.55, 0.25], ddof=1))
    paired = s["paired"]["desd-2"]
    assert paired["per_seed"] == {0: pytest.approx(0.25), 1: pytest.approx(0.05)}
    assert paired["mean"] == pytest.approx(0.15) and set(s["paired"]) == {"desd-2", "mae-2"}
    a, b = [0.5, 0.6, 0.3, 0.2], [0.2, 0.4, 0.1, 0.3]
    assert paired["cases"]["n"] == 4 and paired["cases"]["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    p = sorted(e["cases"]["p_wilcoxon"] for e in s["paired"].values())
    assert sorted(e["p_holm"] for e in s["paired"].values()) == pytest.approx([min(1, 2 * p[0]), min(1, max(2 * p[0], p[1]))])
    filtered = ex.summarise(records, view="filtered")
    assert filtered["groups"]["desd-2"]["mean"] == 1.0
    # the seeds, counted once each: desd better on both (+0.25, +0.05), mae by +0.05 on both
    assert paired["seeds"] == {"better": 2, "worse": 0, "tied": 0, "p": pytest.approx(0.5)}
    text = "\n".join(ex.format_tables(s))
    assert "| desd | 2 | 2 | 0.400 |" in text and "+0.150" in text and "| 2/0/0 | 0.5 |" in text


def test_sign_test_counts_seeds_within_the_tolerance_as_tied():
    from nnunet_ssl.evaluation.stats import sign_test

    # 0.005 is within 0.01 of zero (tied); 5 of 5 better: p = 2 / 2**5
    assert sign_test([0.3, 0.2, 0.4, 0.1, 0.05, 0.005]) == {"better": 5, "worse": 0, "tied": 1, "p": pytest.approx(1 / 16)}
    assert sign_test([0.0, 0.004, float("nan")]) == {"better": 0, "worse": 0, "tied": 2, "p": 1.0}
    assert sign_test([0.5, -0.5])["p"] == pytest.approx(1.0)


def test_plots_and_report_are_written(tmp_path):
    records = {f"{m}-{n}/seed{s}": _record(m, n, s, {"a": 0.1 * n + 0.01 * s, "b": 0.2})
               for m in ("scratch", "desd") for n in (1, 2) for s in (0, 1)}
    s = ex.summarise(records)
    for path in (ex.plot_curves(s, tmp_path / "c.png"), ex.plot_boxes(s, tmp_path / "b.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


# ---------------------------------------------------------------- running jobs side by side
def test_jobs_run_one_per_slot_at_a_time():
    busy, seen, lock = {}, [], threading.Lock()

    def work(job, slot):
        with lock:
            assert not busy.get(slot), f"slot {slot} got a second job"
            busy[slot] = True
        time.sleep(0.02)
        with lock:
            busy[slot] = False
            seen.append((job, slot))

    ex.run_jobs(list(range(12)), [0, 1, 2], work)
    assert sorted(j for j, _ in seen) == list(range(12)) and {s for _, s in seen} == {0, 1, 2}
    seen.clear()
    ex.run_jobs([1, 2, 3], [None], work)
    assert seen == [(1, None), (2, None), (3, None)]

    def failing(job, slot):
        if job == 2:
            raise UserError("arm 2 failed")
    with pytest.raises(UserError, match="arm 2 failed"):
        ex.run_jobs([1, 2, 3, 4], [0, 1], failing)


def test_open_results_continues_extends_and_refuses(tmp_path):
    out = tmp_path / "run"
    base = _config()
    ex.open_results(out, base, force=False)
    ex.open_results(out, _config(seeds=[0, 1, 2], counts=[1, 2, 4]), force=False)  # more arms: continued
    more = _config(methods={**base["methods"], "mae": {"trainer": "nnUNetTrainerMAE"}})
    ex.open_results(out, more, force=False)  # a method added
    with pytest.raises(UserError, match=r"other settings \(finetune\)"):
        ex.open_results(out, _config(finetune={"epochs": 3}), force=False)
    with pytest.raises(UserError, match=r"other settings \(methods.desd\)"):
        ex.open_results(out, _config(methods={"scratch": {}, "desd": {"trainer": "nnUNetTrainerDeSD"}}), force=False)
    (out / "mine.txt").write_text("keep")
    (out / "arms").mkdir()
    ex.open_results(out, _config(finetune={"epochs": 3}), force=True)
    assert (out / "mine.txt").read_text() == "keep" and not (out / "arms").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("")
    with pytest.raises(UserError, match="not empty"):
        ex.open_results(other, base, force=False)


# ---------------------------------------------------------------- ensembles and the filtered evaluation
def test_ensemble_votes_the_seeds_and_both_evaluations_are_recorded(tmp_path, monkeypatch):
    """The commands an ensemble runs and the record it makes (each command is tested on its own elsewhere)."""
    import csv

    experiment = object.__new__(ex._Experiment)
    experiment.c = ex.parse_config(_config(min_lesion_ml=3.0, ensemble=True, label=1), environ={})
    experiment.output, experiment.file_ending = tmp_path, ".nii.gz"
    commands = []

    class FakeRunner:
        def command(self, args, log_name, progress_marker=None):
            commands.append((log_name, args))
            if args[1] == "evaluate":  # what `nnunet-ssl evaluate` writes, with a Dice per filter
                folder = Path(args[args.index("-o") + 1])
                folder.mkdir(parents=True)
                dice = 0.25 if "--min-lesion-ml" in args else 0.5
                (folder / "evaluation_summary.json").write_text(json.dumps(
                    {"labels": {"1": {"metrics": {"dice": {"mean": dice, "median": dice}}}}}))
                with open(folder / "evaluation_per_case.csv", "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerows([["case", "label", "dice"], ["c1", "1", dice]])

    monkeypatch.setattr(experiment, "runner", lambda slot, **env: FakeRunner(), raising=False)
    record = experiment.ensemble("desd", 2)
    names = [name for name, _ in commands]
    assert names == ["ensemble_desd-2", "evaluate_ensemble_desd-2", "evaluate_ensemble_desd-2_filtered"]
    vote = commands[0][1]
    assert vote[1:2] == ["ensemble"] and vote[vote.index("-m") + 1] == "majority"
    assert vote[vote.index("-i") + 1:vote.index("-o")] == [
        str(tmp_path / "arms" / f"desd-2_seed{s}" / "predictions") for s in (0, 1)]
    filtered = commands[2][1]
    assert filtered[filtered.index("--min-lesion-ml") + 1] == "3" and "--filter-prediction" in filtered
    assert record["seeds"] == [0, 1] and record["dice_mean"] == 0.5 and record["filtered"]["dice_mean"] == 0.25
    assert record["filtered"]["dice_per_case"] == {"c1": 0.25}


# ---------------------------------------------------------------- one real grid, killed and resumed
def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _phantom_experiment(root: Path) -> Path:
    from nnunet_ssl.phantom import write_phantom_dataset

    raw, pre = root / "user_raw", root / "user_preprocessed"
    write_phantom_dataset(raw, 601, "ExpSSL", n_train=4, shape=(32, 40, 40), label="brain", seed=0)
    write_phantom_dataset(raw, 602, "ExpTarget", n_train=5, shape=(32, 40, 40), label="lesion", seed=1)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre))
    subprocess.run([NNUNET_SSL, "split", "-d", "602", "--test-fraction", "0.2", "--val-fraction", "0.2",
                    "--no-progress"], env=env, check=True, capture_output=True)
    config = _config(nnUNet_raw="user_raw", split="user_preprocessed/Dataset602_ExpTarget",
                     methods={"scratch": {}, "desd": {"trainer": "nnUNetTrainerDeSD", "settings": TINY_DESD}},
                     counts=[2], seeds=[1],
                     finetune={"epochs": 1, "iterations": 2, "val_iterations": 1,
                               "trainer": "nnUNetTrainerEncoderLR", "settings": {"encoder_lr_factor": 0.5}},
                     plan={"base_features": 8, "gpu_memory_gb": 0.5, "num_processes": 1},
                     min_lesion_ml=0.01)
    path = root / "experiment.json"
    path.write_text(json.dumps(config, indent=1))
    return path


@pytest.mark.slow
def test_scratch_and_desd_killed_and_resumed(tmp_path):
    """scratch and DeSD at 2 labelled cases, seed 1: 2 arms in 1 fold, through the real command. Checked
    without training: seeds, folds and per-method counts (test_arms_are_paired_nested_and_counts_per_method),
    the seed ensemble's commands and record (test_ensemble_votes_the_seeds_and_both_evaluations_are_recorded),
    the report's tables (test_summary_pairs_seeds_and_cases_and_adjusts_p)."""
    config = _phantom_experiment(tmp_path)
    inputs = {name: _tree(tmp_path / name) for name in ("user_raw", "user_preprocessed")}
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.pop(k, None)  # the experiment sets its own
    check = subprocess.run([NNUNET_SSL, "experiment", str(config), "--check"], env=env, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr
    assert "2 arms in 1 folds" in check.stdout and "3 labelled pool, 1 validation, 1 test" in check.stdout

    out = tmp_path / "out"
    args = [NNUNET_SSL, "experiment", str(config), "-o", str(out)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    results_file = out / "results.json"
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if results_file.is_file() and json.loads(results_file.read_text()).get("arms"):
                break
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run, nnU-Net's commands included
        proc.wait()
    first = json.loads(results_file.read_text())
    assert list(first["arms"]) == ["scratch-2/seed1"]
    assert set(first["stages"]) == {"plan:ssl", "pretrain:desd", "transfer:desd"}

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert rerun.stdout.count("recorded by an earlier run, skipped") == 3
    assert "2 arms: 1 recorded, 1 to run" in rerun.stdout and "[arm 1/1]" in rerun.stdout
    results = json.loads(results_file.read_text())
    assert results["arms"]["scratch-2/seed1"] == first["arms"]["scratch-2/seed1"]  # reused, not run again
    assert sorted(results["arms"]) == ["desd-2/seed1", "scratch-2/seed1"]
    for key, record in results["arms"].items():
        assert 0.0 <= record["dice_mean"] <= 1.0 and 0.0 <= record["filtered"]["dice_mean"] <= 1.0
        assert list(record["dice_per_case"]) == results["datasets"]["test"]
        partner = results["arms"][key.replace("desd", "scratch")]
        assert record["train_cases"] == partner["train_cases"] and record["fold_seed"] == partner["fold_seed"]
    # the SSL arms fine-tune with the strategy, scratch as nnU-Net; both with the budget and seed of the fold
    log = next((out / "arms" / "desd-2_seed1" / "nnUNet_results").rglob("training_log_*.txt")).read_text()
    assert "nnUNetTrainerEncoderLR: 1 epochs x 2 iterations (1 validation), seed 1002" in log
    assert "final validation skipped" in log and '"encoder_lr_factor": 0.5' in log
    log = next((out / "arms" / "scratch-2_seed1" / "nnUNet_results").rglob("training_log_*.txt")).read_text()
    assert "nnUNetTrainerBudget: 1 epochs x 2 iterations (1 validation), seed 1002" in log
    report = (out / "report.md").read_text()
    assert "| desd | 2 | 1 |" in report and "Paired against scratch" in report
    assert "lesions under 0.01 mL removed" in report
    for plot in (out / ex.CURVE_PLOT, out / ex.BOX_PLOT):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = report[report.index("## Test Dice"):]

    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "2 arms: 2 recorded, 0 to run" in again.stdout
    assert (out / "report.md").read_text()[report.index("## Test Dice"):] == table
    # nothing outside the experiment folder changed
    assert {name: _tree(tmp_path / name) for name in inputs} == inputs


def test_subsets_are_seeded_nested_and_independent_of_other_counts():
    pool = [f"case_{i:03d}" for i in range(14)]
    a = ex.labelled_subsets(pool, [2, 4, 7, 14], seed=0)
    assert a == ex.labelled_subsets(pool, [2, 4, 7, 14], seed=0)
    assert a[2] == a[4][:2] and a[4] == a[7][:4] and sorted(a[14]) == pool
    assert ex.labelled_subsets(pool, [4], seed=0)[4] == a[4]  # the other counts change nothing
    assert ex.labelled_subsets(pool, [4], seed=1)[4] != a[4]
    with pytest.raises(UserError, match="cannot be drawn"):
        ex.labelled_subsets(pool, [15], seed=0)


def test_first_case_of_every_subset_has_a_lesion_and_folds_are_consistent():
    pool = [f"c{i}" for i in range(8)]
    for seed in range(20):
        assert ex.labelled_subsets(pool, [1, 3], seed, with_lesion=["c5"])[1] == ["c5"]
    with pytest.raises(UserError, match="no case"):
        ex.labelled_subsets(pool, [1], 0, with_lesion=[])
    with pytest.raises(ValueError, match="different training cases"):
        ex.folds([ex.Arm("ssl", 1, 0, 0, ("a",)), ex.Arm("scratch", 1, 0, 0, ("b",))], ["v"])
    with pytest.raises(ValueError, match="validation cases"):
        ex.folds([ex.Arm("ssl", 1, 0, 0, ("v",))], ["v"])


def test_seed_paper_preset_is_a_valid_config_and_its_steps_are_counted(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    config = ex.load_config(REPO / "docs" / "presets" / "seed-paper-grid.json")
    ex.check_methods(config)
    assert set(config.pools) == {"all", "positive", "negative", "all-contra"} and config.ensemble and config.min_lesion_ml == 3.0
    spec = importlib.util.spec_from_file_location("experiment_time", REPO / "bench" / "experiment_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    steps = module.steps(config, pool_size=110)
    assert steps["pretrain"] == {m: 100 * (9600 + 50) for m in ("desd-all", "desd-sa-all", "desd-positive",
                                                                "desd-negative")}
    assert steps["arms"] == {m: 4 * 3 for m in config.methods} and steps["finetune_per_arm"] == 100 * 300
    with pytest.raises(UserError, match="'counts'.*50 labelled cases"):
        module.steps(config, pool_size=40)
