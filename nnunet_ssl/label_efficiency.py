"""Label-efficiency benchmark on phantoms: does SSL pretraining help when labels are few?

For each label count ``n`` and seed ``s`` the benchmark fine-tunes stock nnU-Net
twice on the same ``n`` labelled cases: from scratch (arm ``scratch-n``) and from
the transferred SSL encoder (arm ``ssl-n``), with the same budget and the same
seed, and scores both on held-out test cases with ``nnunet-ssl evaluate``. The
differences ``ssl - scratch`` are therefore paired. Scratch-only arms at larger
counts answer "how many labels is pretraining worth": ``ssl-2`` against
``scratch-7`` reads "pretraining saves ~3.5x the labels" when they tie.

Steps, each a real command with nnU-Net's folders inside the output folder:

1. phantoms: an unlabelled SSL dataset (pool + validation + unlabelled images, no
   test image) and a labelled target dataset (pool + validation, test cases apart);
2. ``nnunet-ssl plan`` (SSL) and ``nnunet-ssl plan-target`` (target);
3. the labelled subsets as folds of the target's ``splits_final.json`` (one fold per
   ``(n, seed)``: train = the subset, val = a fixed validation set) and the
   fine-tuning budget as the ``3d_fullres_budget`` configuration of the target plans
   (read by ``trainers/nnUNetTrainerBudget.py``);
4. pretraining once: ``nnUNetv2_train SSL 3d_fullres all -tr nnUNetTrainerDeSD`` (or another
   ``ssl_trainer``; a pretext trainer (e.g. ``nnUNetTrainerMAE``) reads its block (``ssl_mae``) the benchmark writes
   into the SSL plans);
5. ``nnunet-ssl-transfer`` (skipped for trainers of :data:`WHOLE_NETWORK_TRAINERS`, whose
   ``checkpoint_final.pth`` is a complete nnU-Net network state and is loaded as it is);
6. per arm: ``nnUNetv2_train TARGET 3d_fullres_budget FOLD -tr nnUNetTrainerBudget``
   (``-pretrained_weights`` for ``ssl`` arms), ``nnUNetv2_predict_from_modelfolder``,
   ``nnunet-ssl evaluate``; its result goes into ``results.json`` at once.

A rerun in the same folder skips the stages and arms ``results.json`` records (an
interrupted pretraining continues from its latest checkpoint, an interrupted arm
starts again), so a killed run is continued by running the same command again.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from nnunet_ssl.demo import DemoConfig, Runner, _bin, demo_environment
from nnunet_ssl.errors import UserError

FORMAT = "nnunet_ssl.label_efficiency/1"
SSL_ID, SSL_NAME = 992, "LabelEffSSL"
TARGET_ID, TARGET_NAME = 993, "LabelEffStroke"
FINETUNE_TRAINER = "nnUNetTrainerBudget"
BUDGET_CONFIGURATION = "3d_fullres_budget"
FIRST_TEST_CASE = 10_000
RESULTS_FILE, PLOT_FILE = "results.json", "label_efficiency.png"
ENTRIES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "arms", "logs", "pretrained_encoder.pth",
           RESULTS_FILE, PLOT_FILE)
ARM_TYPES = ("scratch", "ssl")
# SSL trainers whose checkpoint holds the whole U-Net of the plans (nnU-Net's -pretrained_weights loads it)
# (the pretext methods of ``nnunet_ssl.ssl``: trainer name -> its module)
WHOLE_NETWORK_TRAINERS = {
    "nnUNetTrainerMAE": "nnunet_ssl.ssl.mae.trainer",
    "nnUNetTrainerModelsGenesis": "nnunet_ssl.ssl.genesis.trainer",
    "nnUNetTrainerInpainting": "nnunet_ssl.ssl.inpainting.trainer",
    "nnUNetTrainerRotation": "nnunet_ssl.ssl.rotation.trainer",
}
# names of the ``ssl`` settings that set the run length; a pretext run takes them unless ``pretext`` sets them
RUN_LENGTH = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch")
# settings a rerun may change: they only add or drop arms, each of which stands on its own
EXTENDABLE = ("counts", "scratch_counts", "seeds", "device")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that defines a benchmark run; recorded in ``results.json``."""

    counts: tuple[int, ...] = (2, 4)           # labelled cases of the paired scratch/ssl arms
    scratch_counts: tuple[int, ...] = (7, 14)  # extra scratch-only arms (~3.5x the counts)
    seeds: tuple[int, ...] = (0, 1)
    n_pool: int = 14        # labelled training cases the subsets are drawn from
    n_val: int = 2          # fixed validation cases of every fold (never trained on, never tested)
    n_unlabelled: int = 18  # SSL-only images, on top of the pool and validation images
    n_test: int = 6
    shape: tuple[int, int, int] = DemoConfig.shape
    lesion_drop_hu: float = DemoConfig.lesion_drop_hu
    base_features: int = DemoConfig.base_features
    gpu_memory_gb: float = DemoConfig.gpu_memory_gb
    epochs: int = 20
    iterations: int = 40
    val_iterations: int = 5
    # nnU-Net's prediction of the validation cases after training: not used here (the test cases are)
    final_validation: bool = False
    ssl: dict = field(default_factory=lambda: dict(DemoConfig().ssl))
    ssl_trainer: str = "nnUNetTrainerDeSD"
    # the settings block of a pretext trainer, e.g. ``ssl_mae`` (None: its defaults, with the run length of ``ssl``)
    pretext: Optional[dict] = None
    data_seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        for name in ("counts", "scratch_counts", "seeds", "shape"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if not self.counts or min(self.counts) < 1:
            raise UserError(f"counts must be one or more positive numbers, got {list(self.counts)}")
        if self.scratch_counts and min(self.scratch_counts) < 1:
            raise UserError(f"scratch counts must be positive, got {list(self.scratch_counts)}")
        if not self.seeds:
            raise UserError("give at least one seed")
        largest = max(self.counts + self.scratch_counts)
        if largest > self.n_pool:
            raise UserError(f"the largest label count {largest} exceeds the pool of {self.n_pool} labelled "
                            f"cases; raise --n-labelled or lower the counts")
        for name in ("n_val", "n_test", "epochs", "iterations", "val_iterations"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.pretext is not None and self.ssl_trainer not in WHOLE_NETWORK_TRAINERS:
            raise UserError(f"pretext settings apply to --ssl-trainer {' or '.join(WHOLE_NETWORK_TRAINERS)}, "
                            f"not {self.ssl_trainer}")
        if self.ssl_trainer in WHOLE_NETWORK_TRAINERS:
            try:
                pretext_settings_class(self.ssl_trainer).from_dict(pretext_block(self))
            except ValueError as e:
                raise UserError(str(e)) from None

    @property
    def whole_network(self) -> bool:
        """Whether the SSL checkpoint is fine-tuned from directly (no ``nnunet-ssl-transfer``)."""
        return self.ssl_trainer in WHOLE_NETWORK_TRAINERS

    @classmethod
    def from_dict(cls, values: Mapping) -> "BenchmarkConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class Arm:
    """One fine-tuning run: ``kind`` (``scratch``/``ssl``) with ``n`` labelled cases of seed ``seed``."""

    kind: str
    n: int
    seed: int
    fold: int
    train: tuple[str, ...]

    @property
    def key(self) -> str:
        return arm_key(self.kind, self.n, self.seed)


def pretext_settings_class(trainer: str):
    """The settings class (with its plans block name ``BLOCK``) of a pretext trainer."""
    import importlib

    return getattr(importlib.import_module(WHOLE_NETWORK_TRAINERS[trainer]), trainer).settings_class


def pretext_block(config: "BenchmarkConfig") -> dict:
    """The pretext trainer's block of the SSL plans: the run length of ``config.ssl``, then ``config.pretext``.

    Example:
        >>> pretext_block(BenchmarkConfig(ssl={"num_epochs": 3}, ssl_trainer="nnUNetTrainerMAE",
        ...                               pretext={"mask_ratio": 0.5}))
        {'num_epochs': 3, 'mask_ratio': 0.5}
    """
    block = {k: config.ssl[k] for k in RUN_LENGTH if k in config.ssl}
    block.update(config.pretext or {})
    return block


def write_pretext_block(plans_file: Path, config: "BenchmarkConfig") -> None:
    """Set the pretext trainer's block (e.g. ``ssl_mae``) of ``3d_fullres`` in the SSL plans (nnU-Net ignores it)."""
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    plans["configurations"]["3d_fullres"][pretext_settings_class(config.ssl_trainer).BLOCK] = pretext_block(config)
    write_json_atomic(plans_file, plans)


def arm_key(kind: str, n: int, seed: int) -> str:
    """``"ssl-2/seed0"``: how an arm is named in ``results.json`` and its folders."""
    return f"{kind}-{n}/seed{seed}"


def case_ids(config: BenchmarkConfig) -> dict[str, list[str]]:
    """Case identifiers of the target dataset: ``pool``, ``val`` (both in imagesTr) and ``test`` (imagesTs)."""
    pool = [f"case_{i:03d}" for i in range(config.n_pool)]
    val = [f"case_{i:03d}" for i in range(config.n_pool, config.n_pool + config.n_val)]
    test = [f"case_{i:03d}" for i in range(FIRST_TEST_CASE, FIRST_TEST_CASE + config.n_test)]
    return {"pool": pool, "val": val, "test": test}


def labelled_subsets(pool: Sequence[str], counts: Sequence[int], seed: int,
                     with_lesion: Optional[Sequence[str]] = None) -> dict[int, list[str]]:
    """The labelled training cases of seed ``seed`` for each count: nested prefixes of one permutation.

    The pool is shuffled by ``np.random.default_rng(seed)``; the subset of size
    ``n`` is the first ``n`` cases, so a larger count adds cases to a smaller one,
    and it depends only on the pool and the seed, not on the other counts. The
    first case with a lesion (``with_lesion``) is moved to the front, so that no
    subset holds healthy cases only.

    Example:
        >>> subsets = labelled_subsets([f"c{i}" for i in range(6)], [2, 4], seed=0)
        >>> subsets[4][:2] == subsets[2]
        True
    """
    import numpy as np

    if max(counts) > len(pool):
        raise UserError(f"a subset of {max(counts)} cases cannot be drawn from {len(pool)}")
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    if with_lesion is not None:
        lesion = set(with_lesion)
        first = next((c for c in order if c in lesion), None)
        if first is None:
            raise UserError("no case of the labelled pool has a lesion")
        order.remove(first)
        order.insert(0, first)
    return {int(n): order[:n] for n in counts}


def plan_arms(config: BenchmarkConfig, with_lesion: Optional[Sequence[str]] = None) -> list[Arm]:
    """Every arm, in the order they run (seed by seed; per count scratch then ssl), with its fold.

    One fold per ``(n, seed)``: the paired arms share it, and so their training cases
    and fine-tuning seed.
    """
    pool = case_ids(config)["pool"]
    arms, fold = [], 0
    for seed in config.seeds:
        all_counts = sorted(set(config.counts) | set(config.scratch_counts))
        subsets = labelled_subsets(pool, all_counts, seed, with_lesion)
        for n in all_counts:
            kinds = ARM_TYPES if n in config.counts else ("scratch",)
            arms.extend(Arm(kind, n, seed, fold, tuple(subsets[n])) for kind in kinds)
            fold += 1
    return arms


def folds(arms: Sequence[Arm], val: Sequence[str]) -> list[dict]:
    """nnU-Net's ``splits_final.json`` content: fold ``arm.fold`` trains on ``arm.train``, validates on ``val``.

    Example:
        >>> folds([Arm("scratch", 1, 0, 0, ("a",)), Arm("ssl", 1, 0, 0, ("a",))], ["v"])
        [{'train': ['a'], 'val': ['v']}]
    """
    by_fold = {}
    for arm in arms:
        train = list(arm.train)
        if by_fold.setdefault(arm.fold, train) != train:
            raise ValueError(f"fold {arm.fold} holds arms with different training cases")
        if set(train) & set(val):
            raise ValueError(f"fold {arm.fold} trains on validation cases {sorted(set(train) & set(val))}")
    if sorted(by_fold) != list(range(len(by_fold))):
        raise ValueError(f"folds must be numbered 0..{len(by_fold) - 1}, got {sorted(by_fold)}")
    return [{"train": by_fold[k], "val": list(val)} for k in range(len(by_fold))]


def fold_seed(n: int, seed: int) -> int:
    """The fine-tuning seed of the fold of ``(n, seed)``: independent of which other arms run."""
    return 1000 * int(seed) + int(n)


# ---------------------------------------------------------------- results maths
def summarise(results: Mapping, near_factor: float = 3.5, tolerance: float = 0.25) -> dict:
    """Per-arm statistics over seeds and paired differences, from ``results["arms"]``.

    Returns a dict with:

    * ``arms``: ``{"ssl-2": {"kind", "n", "seeds", "dice" (per seed), "mean", "median"}}``;
    * ``paired``: ``{n: {"per_seed": {seed: ssl - scratch}, "mean", "median"}}`` over the
      seeds where both arms finished;
    * ``scratch_near``: ``{n: count}``, the scratch count closest to ``near_factor * n``
      within ``tolerance`` (relative), where one finished.

    Example:
        >>> r = {"arms": {"scratch-2/seed0": {"kind": "scratch", "n": 2, "seed": 0, "dice_mean": 0.5},
        ...               "ssl-2/seed0": {"kind": "ssl", "n": 2, "seed": 0, "dice_mean": 0.7}}}
        >>> round(summarise(r)["paired"][2]["mean"], 3)
        0.2
    """
    per = {}
    for record in results.get("arms", {}).values():
        key = f"{record['kind']}-{record['n']}"
        per.setdefault(key, {"kind": record["kind"], "n": int(record["n"]), "dice": {}})
        per[key]["dice"][int(record["seed"])] = float(record["dice_mean"])
    for s in per.values():
        s["dice"] = dict(sorted(s["dice"].items()))
        s["seeds"] = list(s["dice"])
        values = list(s["dice"].values())
        s["mean"], s["median"] = statistics.fmean(values), statistics.median(values)
    arms = dict(sorted(per.items(), key=lambda kv: (ARM_TYPES.index(kv[1]["kind"]), kv[1]["n"])))
    paired = {}
    for n in sorted({s["n"] for s in arms.values() if s["kind"] == "ssl"}):
        ssl, scratch = arms[f"ssl-{n}"]["dice"], arms.get(f"scratch-{n}", {}).get("dice", {})
        diffs = {seed: ssl[seed] - scratch[seed] for seed in ssl if seed in scratch}
        if diffs:
            paired[n] = {"per_seed": diffs, "mean": statistics.fmean(diffs.values()),
                         "median": statistics.median(diffs.values())}
    scratch_counts = [s["n"] for s in arms.values() if s["kind"] == "scratch"]
    near = {}
    for n in sorted({s["n"] for s in arms.values() if s["kind"] == "ssl"}):
        target = near_factor * n
        candidates = [m for m in scratch_counts if abs(m - target) <= tolerance * target]
        if candidates:
            near[n] = min(candidates, key=lambda m: (abs(m - target), m))
    return {"arms": arms, "paired": paired, "scratch_near": near}


def format_table(summary: Mapping) -> str:
    """The summary as plain-text tables (arms; paired differences; ssl-n against scratch at ~3.5n)."""
    lines = [f"{'arm':<12}{'seeds':>6}{'mean Dice':>11}{'median':>9}   per seed"]
    for name, s in summary["arms"].items():
        per_seed = ", ".join(f"{seed}: {v:.3f}" for seed, v in s["dice"].items())
        lines.append(f"{name:<12}{len(s['seeds']):>6}{s['mean']:>11.3f}{s['median']:>9.3f}   {per_seed}")
    if summary["paired"]:
        lines += ["", f"{'paired ssl - scratch':<22}{'mean':>8}{'median':>9}   per seed"]
        for n, d in summary["paired"].items():
            per_seed = ", ".join(f"{seed}: {v:+.3f}" for seed, v in d["per_seed"].items())
            lines.append(f"{'n = ' + str(n):<22}{d['mean']:>+8.3f}{d['median']:>+9.3f}   {per_seed}")
    if summary["scratch_near"]:
        lines += ["", "ssl-n against scratch at ~3.5n (mean Dice over seeds)"]
        for n, m in summary["scratch_near"].items():
            ssl, scratch = summary["arms"][f"ssl-{n}"], summary["arms"][f"scratch-{m}"]
            lines.append(f"ssl-{n} {ssl['mean']:.3f}   scratch-{m} {scratch['mean']:.3f}   "
                         f"difference {ssl['mean'] - scratch['mean']:+.3f}")
    return "\n".join(lines)


def plot(summary: Mapping, path: Path) -> Path:
    """Dice against the number of labelled cases: one line per arm type (mean over seeds), seeds as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, kind in enumerate(ARM_TYPES):
        arms = sorted((s for s in summary["arms"].values() if s["kind"] == kind), key=lambda s: s["n"])
        if not arms:
            continue
        colour = f"C{i}"
        ax.plot([s["n"] for s in arms], [s["mean"] for s in arms], "-o", color=colour, label=f"{kind} (mean)")
        for s in arms:
            ax.scatter([s["n"]] * len(s["dice"]), list(s["dice"].values()), color=colour, alpha=0.4, s=14)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("labelled training cases")
    ax.set_ylabel("test Dice (mean over cases)")
    ax.set_title("Label efficiency: fine-tuning from scratch vs from SSL")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- results file
def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temporary file beside ``path``, then rename: a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def open_results(output: Path, config: BenchmarkConfig, force: bool) -> dict:
    """The results of this folder to continue, or fresh ones; refuse folders that are not a matching run.

    With ``force`` only the benchmark's own entries (:data:`ENTRIES`) are removed first.
    """
    if output.exists() and not output.is_dir():
        raise UserError(f"{output} exists and is not a folder")
    if force and output.is_dir():
        for name in ENTRIES:
            path = output / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    output.mkdir(parents=True, exist_ok=True)
    results_file = output / RESULTS_FILE
    if results_file.is_file():
        results = json.loads(results_file.read_text(encoding="utf-8"))
        if results.get("format") != FORMAT:
            raise UserError(f"{results_file} is not a label-efficiency results file ({FORMAT})")
        old, new = results["config"], config.to_dict()
        differ = sorted(k for k in set(old) | set(new) if k not in EXTENDABLE and old.get(k) != new.get(k))
        if differ:
            raise UserError(f"{output} holds a run with other settings ({', '.join(differ)}); continue it "
                            "with the same settings, choose another folder, or pass --force to start over")
        results["config"] = new
        return results
    if not force and any(output.iterdir()):
        raise UserError(f"output folder {output} is not empty and holds no {RESULTS_FILE}; choose another "
                        "folder (or pass --force, which removes only the benchmark's own entries: "
                        f"{', '.join(ENTRIES)})")
    results = {"format": FORMAT, "config": config.to_dict(), "stages": {}, "arms": {}}
    write_json_atomic(results_file, results)
    return results


# ---------------------------------------------------------------- the run
def target_plans_name() -> str:
    """The plans ``nnunet-ssl plan-target`` writes for the target dataset."""
    from nnunet_ssl.target_plans import default_plans_name

    return default_plans_name("nnUNetPlans", f"Dataset{SSL_ID:03d}_{SSL_NAME}")


def cases_with_lesion(labels_folder: Path, identifiers: Sequence[str], file_ending: str = ".nii.gz") -> list[str]:
    """The identifiers whose label map in ``labels_folder`` holds a voxel above 0."""
    import SimpleITK as sitk

    return [c for c in identifiers
            if sitk.GetArrayFromImage(sitk.ReadImage(str(labels_folder / f"{c}{file_ending}"))).max() > 0]


def write_budget_configuration(plans_file: Path, config: BenchmarkConfig, arms: Sequence[Arm]) -> None:
    """Add :data:`BUDGET_CONFIGURATION` (``3d_fullres`` plus the ``budget`` block) to the target plans."""
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    seeds = {arm.fold: fold_seed(arm.n, arm.seed) for arm in arms}
    plans["configurations"][BUDGET_CONFIGURATION] = {
        "inherits_from": "3d_fullres",
        "budget": {"num_epochs": config.epochs, "num_iterations_per_epoch": config.iterations,
                   "num_val_iterations_per_epoch": config.val_iterations,
                   "final_validation": config.final_validation,
                   "fold_seeds": [seeds[k] for k in range(len(seeds))]},
    }
    write_json_atomic(plans_file, plans)


def read_evaluation(folder: Path, label: str = "1") -> dict:
    """Mean, median and per-case Dice of one label from ``nnunet-ssl evaluate``'s output folder."""
    import csv

    summary = json.loads((folder / "evaluation_summary.json").read_text(encoding="utf-8"))
    dice = summary["labels"][label]["metrics"]["dice"]
    with open(folder / "evaluation_per_case.csv", newline="", encoding="utf-8") as f:
        per_case = {row["case"]: float(row["dice"]) for row in csv.DictReader(f) if row["label"] == label}
    return {"dice_mean": float(dice["mean"]), "dice_median": float(dice["median"]), "dice_per_case": per_case}


class _Progress:
    def __init__(self, echo: Callable[[str], None]):
        self.echo, self.t0 = echo, time.time()

    def __call__(self, text: str) -> None:
        self.echo(f"{text}  (elapsed {time.time() - self.t0:.0f} s)")


def run_benchmark(output: str | os.PathLike, config: BenchmarkConfig = BenchmarkConfig(), force: bool = False,
                  echo: Callable[[str], None] = print) -> dict:
    """Run (or continue) the benchmark in ``output``; return the summary (see :func:`summarise`).

    Example:
        >>> run_benchmark("le_run", BenchmarkConfig(counts=(2, 4), seeds=(0, 1)))  # doctest: +SKIP
    """
    from nnunet_ssl.phantom import write_phantom_dataset

    output = Path(output).resolve()
    results = open_results(output, config, force)
    results_file = output / RESULTS_FILE
    save = lambda: write_json_atomic(results_file, results)  # noqa: E731
    save()
    env = demo_environment(output)
    run = Runner(output, env, 0, echo)
    progress = _Progress(echo)
    c, stages, plans = config, results["stages"], target_plans_name()
    raw, preprocessed = Path(env["nnUNet_raw"]), Path(env["nnUNet_preprocessed"])
    target_raw = raw / f"Dataset{TARGET_ID}_{TARGET_NAME}"
    ids = case_ids(c)

    def stage(name: str, title: str, work: Callable[[], None]) -> None:
        run.step += 1
        if name in stages:
            echo(f"[{name}] recorded by an earlier run, skipped")
            return
        progress(f"[{name}] {title}")
        t = time.time()
        work()
        stages[name] = {"elapsed_s": round(time.time() - t, 1)}
        save()

    def write_data():
        # the SSL dataset holds the pool and validation images (unlabelled use), never a test image
        write_phantom_dataset(raw, SSL_ID, SSL_NAME, n_train=c.n_pool + c.n_val + c.n_unlabelled, shape=c.shape,
                              label="brain", seed=c.data_seed, lesion_drop_hu=c.lesion_drop_hu)
        write_phantom_dataset(raw, TARGET_ID, TARGET_NAME, n_train=c.n_pool + c.n_val, n_test=c.n_test,
                              shape=c.shape, label="lesion", seed=c.data_seed, first_test_case=FIRST_TEST_CASE,
                              lesion_drop_hu=c.lesion_drop_hu)

    def plan():
        ssl_args = [f"{k}={json.dumps(v)}" for k, v in c.ssl.items()]
        run.command([_bin("nnunet-ssl"), "plan", "-d", str(SSL_ID), "--base-features", str(c.base_features),
                     "--gpu-memory-gb", str(c.gpu_memory_gb), "-np", "1", "--ssl", *ssl_args], "plan_ssl")
        run.command([_bin("nnunet-ssl"), "plan-target", "-d", str(TARGET_ID), "--from", str(SSL_ID), "-np", "1",
                     "--force"], "plan_target")

    ssl_folder = (output / "nnUNet_results" / f"Dataset{SSL_ID}_{SSL_NAME}" /
                  f"{c.ssl_trainer}__nnUNetPlans__3d_fullres" / "fold_all")
    weights = ssl_folder / "checkpoint_final.pth" if c.whole_network else output / "pretrained_encoder.pth"

    def pretrain():
        if c.whole_network:
            write_pretext_block(preprocessed / f"Dataset{SSL_ID}_{SSL_NAME}" / "nnUNetPlans.json", c)
        # --c: an interrupted pretraining continues from its latest checkpoint (nnU-Net starts anew without one)
        run.command([_bin("nnUNetv2_train"), str(SSL_ID), "3d_fullres", "all", "-tr", c.ssl_trainer,
                     "-device", c.device, "--c"], "pretrain", progress_marker="train_loss")

    def transfer():
        run.command([_bin("nnunet-ssl-transfer"), str(ssl_folder / "checkpoint_final.pth"), "-d", str(TARGET_ID),
                     "-p", plans, "-o", str(weights), "--force"], "transfer")

    stage("data", f"writing phantoms: {c.n_pool + c.n_val + c.n_unlabelled} for SSL; {c.n_pool} labelled pool + "
                  f"{c.n_val} validation + {c.n_test} test for segmentation", write_data)
    stage("plan", "planning and preprocessing (nnunet-ssl plan, plan-target)", plan)

    arms = plan_arms(c, cases_with_lesion(target_raw / "labelsTr", ids["pool"]))
    for arm in arms:
        recorded = results["arms"].get(arm.key)
        if recorded and recorded["train_cases"] != list(arm.train):
            raise UserError(f"{arm.key} in {results_file} trained on other cases than this run selects; "
                            "pass --force to start over")
    target_pre = preprocessed / f"Dataset{TARGET_ID}_{TARGET_NAME}"
    write_json_atomic(target_pre / "splits_final.json", folds(arms, ids["val"]))
    write_budget_configuration(target_pre / f"{plans}.json", c, arms)

    needs_ssl = any(a.kind == "ssl" and a.key not in results["arms"] for a in arms)
    if needs_ssl or "pretrain" in stages:
        stage("pretrain", f"SSL pretraining: nnUNetv2_train {SSL_ID} 3d_fullres all -tr {c.ssl_trainer}", pretrain)
        if not c.whole_network:
            stage("transfer", "transferring the teacher encoder (nnunet-ssl-transfer)", transfer)

    todo = [a for a in arms if a.key not in results["arms"]]
    echo(f"{len(arms)} arms: {len(arms) - len(todo)} recorded, {len(todo)} to run "
         f"({c.epochs} epochs x {c.iterations} iterations each)")
    for i, arm in enumerate(todo, 1):
        progress(f"[arm {i}/{len(todo)}] {arm.key}: fine-tuning on {arm.n} case(s), fold {arm.fold}")
        t = time.time()
        record = _run_arm(arm, output, env, echo, c, plans, weights, target_raw)
        record["elapsed_s"] = round(time.time() - t, 1)
        results["arms"][arm.key] = record
        save()
        echo(f"      {arm.key}: test Dice mean {record['dice_mean']:.3f}, median {record['dice_median']:.3f} "
             f"({record['elapsed_s']:.0f} s)")

    done = {a.key for a in arms}
    summary = summarise({"arms": {k: v for k, v in results["arms"].items() if k in done}})
    results["summary"] = json.loads(json.dumps(summary))
    save()
    plot(summary, output / PLOT_FILE)
    echo("")
    echo(format_table(summary))
    progress(f"Results in {results_file} and {output / PLOT_FILE}")
    return summary


def _run_arm(arm: Arm, output: Path, env: dict, echo, c: BenchmarkConfig, plans: str, weights: Path,
             target_raw: Path) -> dict:
    """Fine-tune, predict and evaluate one arm in its own folder; return its record."""
    tag = arm.key.replace("/", "_")
    folder = output / "arms" / tag
    if folder.exists():  # what an interrupted earlier attempt left: the arm starts again
        shutil.rmtree(folder)
    arm_env = dict(env, nnUNet_results=str(folder / "nnUNet_results"))
    Path(arm_env["nnUNet_results"]).mkdir(parents=True)
    run = Runner(output, arm_env, 0, echo)
    extra = ["-pretrained_weights", str(weights)] if arm.kind == "ssl" else []
    run.command([_bin("nnUNetv2_train"), str(TARGET_ID), BUDGET_CONFIGURATION, str(arm.fold), "-tr", FINETUNE_TRAINER,
                 "-p", plans, "-device", c.device, *extra], f"finetune_{tag}", progress_marker="Pseudo dice")
    model = (folder / "nnUNet_results" / f"Dataset{TARGET_ID}_{TARGET_NAME}" /
             f"{FINETUNE_TRAINER}__{plans}__{BUDGET_CONFIGURATION}")
    pred = folder / "predictions"
    run.command([_bin("nnUNetv2_predict_from_modelfolder"), "-i", str(target_raw / "imagesTs"), "-o", str(pred),
                 "-m", str(model), "-f", str(arm.fold), "-device", c.device, "-npp", "1", "-nps", "1"],
                f"predict_{tag}")
    run.command([_bin("nnunet-ssl"), "evaluate", str(pred), str(target_raw / "labelsTs"), "-o",
                 str(folder / "evaluation"), "--labels", "1"], f"evaluate_{tag}")
    return {"kind": arm.kind, "n": arm.n, "seed": arm.seed, "fold": arm.fold, "train_cases": list(arm.train),
            "fold_seed": fold_seed(arm.n, arm.seed), **read_evaluation(folder / "evaluation"),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
