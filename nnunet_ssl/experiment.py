"""``nnunet-ssl experiment CONFIG``: the label-efficiency study on the user's own datasets.

A JSON file names the target dataset (labelled, split with ``nnunet-ssl split``), the
SSL datasets ("pools"), the methods (``scratch`` and any SSL trainer, each with its
settings), the labelled-case counts, the seeds and the fine-tuning budget. The run:

1. links the datasets into the experiment's own ``nnUNet_raw`` (nothing outside the
   experiment folder is written) and plans each pool (``nnunet-ssl plan``) and the
   target from it (``nnunet-ssl plan-target``);
2. pretrains once per SSL method (``nnUNetv2_train POOL CONFIGURATION all -tr TRAINER
   -p PLANS`` with the method's settings in its own copy of the pool's plans) and
   transfers the encoder (``nnunet-ssl-transfer``; ``"transfer": "whole"`` fine-tunes
   from the whole pretrained network instead);
3. fine-tunes every arm ``(method, n, seed)`` with stock nnU-Net
   (``nnUNetTrainerBudget``: same budget and seed for the arms of one ``(n, seed)``, whose
   labelled cases are the first ``n`` of the pool shuffled by the seed), predicts the
   held-out test cases and evaluates them (``nnunet-ssl evaluate``, also with the lesion
   size filter when ``min_lesion_ml`` is set); ensembles the seeds if asked;
4. writes ``report.md``: the table of every arm, paired statistics against scratch at
   each count, and plots.

Every stage and arm is recorded in ``results.json`` when it finishes; running the same
command again continues a killed run. With ``"gpus": [0, 1, ...]`` jobs run side by side,
one per GPU; otherwise one at a time. The schema is in ``docs/experiment.md``.
"""
from __future__ import annotations

import json
import math
import os
import queue
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from nnunet_ssl.demo import TRAINERS_DIR, Runner, _bin, demo_environment, remove_entries
from nnunet_ssl.errors import UserError

FORMAT = "nnunet_ssl.experiment/1"
SCRATCH = "scratch"
FINETUNE_TRAINER = "nnUNetTrainerBudget"
RESULTS_FILE, REPORT_FILE = "results.json", "report.md"
CURVE_PLOT, BOX_PLOT = "dice_vs_labelled.png", "dice_boxplots.png"
# what the experiment writes into its folder (``--force`` removes these, nothing else)
ENTRIES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "arms", "ensembles", "pretrained", "test",
           "logs", RESULTS_FILE, REPORT_FILE, CURVE_PLOT, BOX_PLOT)
# config fields a rerun may change: they add or drop arms (or run them elsewhere), each standing on its own
EXTENDABLE = ("counts", "seeds", "gpus", "device", "ensemble", "methods")
FIELDS = {
    "target": "target dataset (id or name in nnUNet_raw), split with `nnunet-ssl split`",
    "pools": "SSL datasets by name, e.g. {\"all\": \"Dataset502_SSL\"}",
    "methods": "methods by name: \"scratch\" or {\"trainer\", \"pool\", \"settings\", \"transfer\", \"counts\"}",
    "counts": "labelled-case counts: positive integers or \"all\"",
    "seeds": "seeds: each draws the labelled subsets and seeds the fine-tuning",
    "finetune": "fine-tuning: {\"epochs\", \"iterations\", \"val_iterations\", \"final_validation\", \"trainer\", "
                "\"settings\"}",
    "plan": "planning of the pools: {\"base_features\", \"max_features\", \"gpu_memory_gb\", \"planner\", "
            "\"num_processes\"}",
    "configuration": "nnU-Net configuration (3d_fullres or 2d)",
    "split": "folder holding splits_final.json and splits_test.json (default: the target's in nnUNet_preprocessed)",
    "nnUNet_raw": "folder of the datasets (default: $nnUNet_raw)",
    "label": "label evaluated (default 1)",
    "min_lesion_ml": "also evaluate with lesions under this volume removed (0: no filtered evaluation)",
    "ensemble": "majority vote of the seeds' predictions per method and count",
    "device": "cuda, cpu or mps",
    "gpus": "GPU indices: one job per GPU at a time (cuda only)",
}
METHOD_FIELDS = ("trainer", "pool", "settings", "transfer", "counts")
FINETUNE_FIELDS = {"epochs": 1000, "iterations": 250, "val_iterations": 50, "final_validation": False,
                   "trainer": FINETUNE_TRAINER, "settings": {}}
PLAN_FIELDS = ("base_features", "max_features", "gpu_memory_gb", "planner", "num_processes")


# ---------------------------------------------------------------- the config
@dataclass(frozen=True)
class Method:
    """A method of the experiment: ``scratch`` (no trainer) or an SSL trainer pretrained on ``pool``."""

    name: str
    trainer: Optional[str] = None
    pool: Optional[str] = None
    settings: dict = field(default_factory=dict)
    transfer: str = "encoder"
    counts: Optional[tuple] = None

    @property
    def is_scratch(self) -> bool:
        return self.trainer is None


@dataclass(frozen=True)
class ExperimentConfig:
    """A checked experiment config (see :func:`parse_config`); ``raw`` is its JSON form."""

    target: str
    pools: dict
    methods: dict
    counts: tuple
    seeds: tuple
    finetune: dict
    plan: dict
    configuration: str
    split: Optional[Path]
    nnunet_raw: Path
    label: int
    min_lesion_ml: float
    ensemble: bool
    device: str
    gpus: tuple
    raw: dict


def _fail(name: str, problem: str) -> UserError:
    return UserError(f"config field '{name}': {problem}")


def _int_list(value, name: str, allow_all: bool = False, minimum: int = 0) -> tuple:
    if not isinstance(value, list) or not value:
        raise _fail(name, f"must be a non-empty list, got {json.dumps(value)}")
    out = []
    for v in value:
        if allow_all and v == "all":
            out.append("all")
        elif isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            wanted = 'a positive integer or "all"' if allow_all else f"an integer >= {minimum}"
            raise _fail(name, f"{json.dumps(v)} is not {wanted}")
        else:
            out.append(v)
    if len(set(map(str, out))) != len(out):
        raise _fail(name, f"repeats a value: {json.dumps(value)}")
    return tuple(out)


def _block(values: Mapping, name: str, known) -> dict:
    """The object ``values[name]`` (empty when absent), its names all in ``known``."""
    block = values.get(name, {})
    if not isinstance(block, dict):
        raise _fail(name, f"must be an object, got {json.dumps(block)}")
    unknown = sorted(set(block) - set(known))
    if unknown:
        raise _fail(f"{name}.{unknown[0]}", f"unknown; known: {', '.join(known)}")
    return block


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and check an experiment config file (JSON); every bad field is refused by name."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"experiment config {path} not found")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"experiment config {path} is not valid JSON: {e}") from None
    return parse_config(values, base=path.resolve().parent)


def parse_config(values: Any, base: Path = Path("."), environ: Mapping[str, str] = os.environ) -> ExperimentConfig:
    """Check a config mapping; paths are relative to ``base``. Raises :class:`UserError` naming the field.

    Example:
        >>> c = parse_config({"target": "501", "pools": {"all": "502"}, "nnUNet_raw": "raw",
        ...                   "methods": {"scratch": {}, "desd": {"trainer": "nnUNetTrainerDeSD"}},
        ...                   "counts": [2, "all"], "seeds": [0]}, environ={})
        >>> c.methods["desd"].pool, c.counts
        ('all', (2, 'all'))
    """
    if not isinstance(values, dict):
        raise UserError(f"an experiment config is a JSON object of fields, got {type(values).__name__}")
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise _fail(unknown[0], f"unknown; known fields: {', '.join(FIELDS)}")
    for name in ("target", "methods", "counts", "seeds"):
        if name not in values:
            raise _fail(name, f"missing ({FIELDS[name]})")
    target = values["target"]
    if isinstance(target, bool) or not isinstance(target, (str, int)) or not str(target).strip():
        raise _fail("target", f"must be a dataset id or name, got {json.dumps(target)}")
    pools = values.get("pools", {})
    if not isinstance(pools, dict) or not all(isinstance(k, str) and isinstance(v, (str, int)) and
                                              not isinstance(v, bool) for k, v in pools.items()):
        raise _fail("pools", f"must map pool names to dataset ids or names, got {json.dumps(pools)}")
    counts = _int_list(values["counts"], "counts", allow_all=True, minimum=1)
    seeds = _int_list(values["seeds"], "seeds")
    methods = _parse_methods(values["methods"], pools)
    finetune = _block(values, "finetune", FINETUNE_FIELDS)
    for k, v in finetune.items():
        if k == "final_validation":
            if not isinstance(v, bool):
                raise _fail(f"finetune.{k}", f"must be true or false, got {json.dumps(v)}")
        elif k == "trainer":
            if not isinstance(v, str) or not v:
                raise _fail(f"finetune.{k}", f"must be a trainer class name, got {json.dumps(v)}")
        elif k == "settings":
            if not isinstance(v, dict):
                raise _fail(f"finetune.{k}", f"must be an object (the finetune block), got {json.dumps(v)}")
        elif isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _fail(f"finetune.{k}", f"must be a positive integer, got {json.dumps(v)}")
    finetune = {**FINETUNE_FIELDS, **finetune}
    plan = _block(values, "plan", PLAN_FIELDS)
    for k, v in plan.items():
        if k == "planner":
            from nnunet_ssl.planning import PLANNERS

            if v not in PLANNERS:
                raise _fail("plan.planner", f"{json.dumps(v)} is not one of {', '.join(sorted(PLANNERS))}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (
                k != "gpu_memory_gb" and not isinstance(v, int)):
            raise _fail(f"plan.{k}", f"must be a positive {'number' if k == 'gpu_memory_gb' else 'integer'}, "
                                     f"got {json.dumps(v)}")
    configuration = values.get("configuration", "3d_fullres")
    if configuration not in ("3d_fullres", "2d"):
        raise _fail("configuration", f"must be 3d_fullres or 2d, got {json.dumps(configuration)}")
    raw_value = values.get("nnUNet_raw", environ.get("nnUNet_raw"))
    if not raw_value:
        raise _fail("nnUNet_raw", "not given and $nnUNet_raw is not set")
    split = values.get("split")
    if split is not None and not isinstance(split, str):
        raise _fail("split", f"must be a folder, got {json.dumps(split)}")
    label = values.get("label", 1)
    if isinstance(label, bool) or not isinstance(label, int) or label < 1:
        raise _fail("label", f"must be a positive integer, got {json.dumps(label)}")
    min_ml = values.get("min_lesion_ml", 0)
    if isinstance(min_ml, bool) or not isinstance(min_ml, (int, float)) or not min_ml >= 0:
        raise _fail("min_lesion_ml", f"must be a number >= 0, got {json.dumps(min_ml)}")
    ensemble = values.get("ensemble", False)
    if not isinstance(ensemble, bool):
        raise _fail("ensemble", f"must be true or false, got {json.dumps(ensemble)}")
    if ensemble and len(seeds) < 2:
        raise _fail("ensemble", "needs two or more seeds")
    device = values.get("device", "cuda")
    if device not in ("cuda", "cpu", "mps"):
        raise _fail("device", f"must be cuda, cpu or mps, got {json.dumps(device)}")
    gpus = _int_list(values["gpus"], "gpus") if "gpus" in values else ()
    if gpus and device != "cuda":
        raise _fail("gpus", f"applies to device cuda, not {device}")
    return ExperimentConfig(
        target=str(target), pools={k: str(v) for k, v in pools.items()}, methods=methods, counts=counts,
        seeds=seeds, finetune=finetune, plan=dict(plan), configuration=configuration,
        split=None if split is None else (base / split).resolve(), nnunet_raw=(base / raw_value).resolve(),
        label=label, min_lesion_ml=float(min_ml), ensemble=ensemble, device=device, gpus=gpus,
        raw=json.loads(json.dumps(values)))


def _parse_methods(methods: Any, pools: Mapping) -> dict:
    if not isinstance(methods, dict) or not methods:
        raise _fail("methods", f"must be a non-empty object of methods by name, got {json.dumps(methods)}")
    out = {}
    for name, spec in methods.items():
        where = f"methods.{name}"
        if not name or any(c in name for c in " /\\"):
            raise _fail(where, "method names are non-empty and hold no spaces, '/' or '\\'")
        if not isinstance(spec, dict):
            raise _fail(where, f"must be an object, got {json.dumps(spec)}")
        unknown = sorted(set(spec) - set(METHOD_FIELDS))
        if unknown:
            raise _fail(f"{where}.{unknown[0]}", f"unknown; known: {', '.join(METHOD_FIELDS)}")
        counts = _int_list(spec["counts"], f"{where}.counts", allow_all=True, minimum=1) if "counts" in spec else None
        if name == SCRATCH:
            extra = sorted(set(spec) - {"counts"})
            if extra:
                raise _fail(f"{where}.{extra[0]}", "scratch trains no SSL method; it takes only counts")
            out[name] = Method(name, counts=counts)
            continue
        trainer = spec.get("trainer")
        if not isinstance(trainer, str) or not trainer:
            raise _fail(f"{where}.trainer", f"an SSL trainer class is needed, got {json.dumps(trainer)}")
        pool = spec.get("pool")
        if pool is None:
            if len(pools) != 1:
                raise _fail(f"{where}.pool", f"name one of the pools ({', '.join(pools) or 'none defined'})")
            pool = next(iter(pools))
        if pool not in pools:
            raise _fail(f"{where}.pool", f"{json.dumps(pool)} is not one of the pools ({', '.join(pools) or 'none'})")
        settings = spec.get("settings", {})
        if not isinstance(settings, dict):
            raise _fail(f"{where}.settings", f"must be an object, got {json.dumps(settings)}")
        transfer = spec.get("transfer", "encoder")
        if transfer not in ("encoder", "whole"):
            raise _fail(f"{where}.transfer", f"must be encoder or whole, got {json.dumps(transfer)}")
        out[name] = Method(name, trainer, pool, dict(settings), transfer, counts)
    if SCRATCH not in out:
        raise _fail("methods", "must hold \"scratch\": every method is compared with it")
    return out


def trainer_settings(trainer: str):
    """The settings class of an SSL trainer of the package's ``trainers`` folder (its plans block is ``BLOCK``)."""
    import importlib.util

    from nnunet_ssl.desd.settings import DeSDSettings
    from nnunet_ssl.desd.trainer import nnUNetTrainerDeSD

    for path in sorted(TRAINERS_DIR.glob("*.py")):
        if trainer not in path.read_text(encoding="utf-8"):
            continue
        spec = importlib.util.spec_from_file_location(f"nnunet_ssl_trainers_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cls = getattr(module, trainer, None)
        if cls is None:
            continue
        if issubclass(cls, nnUNetTrainerDeSD):
            return DeSDSettings
        settings = getattr(cls, "settings_class", None)
        if settings is not None:
            return settings
    raise UserError(f"{trainer} is not an SSL trainer of nnunet-ssl (the trainers folder {TRAINERS_DIR})")


def settings_block(trainer: str) -> str:
    """The plans block a trainer reads its settings from (``ssl`` for DeSD, ``ssl_mae`` for MAE, ...)."""
    return getattr(trainer_settings(trainer), "BLOCK", "ssl")


def check_finetune(config: ExperimentConfig) -> None:
    """The fine-tuning trainer is ``nnUNetTrainerBudget`` or a strategy of :mod:`nnunet_ssl.finetune.trainers`
    (which applies the budget), and its ``finetune`` settings are valid."""
    from nnunet_ssl.finetune import trainers
    from nnunet_ssl.finetune.settings import FinetuneSettings

    name, settings = config.finetune["trainer"], config.finetune["settings"]
    strategies = sorted(n for n, cls in vars(trainers).items()
                        if isinstance(cls, type) and issubclass(cls, trainers.nnUNetTrainerFinetune))
    if name != FINETUNE_TRAINER and name not in strategies:
        raise _fail("finetune.trainer", f"{name} is not {FINETUNE_TRAINER} or one of the fine-tuning strategies "
                                        f"({', '.join(strategies)})")
    if settings and name == FINETUNE_TRAINER:
        raise _fail("finetune.settings", f"{FINETUNE_TRAINER} reads no finetune block; name a strategy trainer")
    if "num_epochs" in settings:
        raise _fail("finetune.settings", "num_epochs: the run length of every arm is finetune.epochs")
    try:
        FinetuneSettings.from_dict(settings)
    except ValueError as e:
        raise _fail("finetune.settings", str(e)) from None


def check_methods(config: ExperimentConfig) -> None:
    """Each SSL method's trainer exists and its settings are valid (before any work)."""
    check_finetune(config)
    for m in config.methods.values():
        if m.is_scratch:
            continue
        try:
            cls = trainer_settings(m.trainer)
        except UserError as e:
            raise _fail(f"methods.{m.name}.trainer", str(e)) from None
        try:
            cls.from_dict(m.settings)
        except ValueError as e:
            raise _fail(f"methods.{m.name}.settings", str(e)) from None
        if m.transfer == "whole" and getattr(cls, "BLOCK", "ssl") == "ssl":
            raise _fail(f"methods.{m.name}.transfer", f"{m.trainer} trains no decoder; use encoder")


# ---------------------------------------------------------------- datasets, subsets and arms
def find_dataset(raw: Path, value: str) -> str:
    """``"501"`` or ``"Dataset501_X"`` -> the folder name ``Dataset501_X`` in ``raw``."""
    if value.startswith("Dataset"):
        if (raw / value / "dataset.json").is_file():
            return value
    elif value.isdigit():
        found = sorted(p.name for p in raw.glob(f"Dataset{int(value):03d}_*") if (p / "dataset.json").is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(f"dataset id {value} names several datasets in {raw}: {', '.join(found)}")
    raise UserError(f"dataset {value!r} not found in {raw} (a folder DatasetXXX_Name with a dataset.json)")


@dataclass(frozen=True)
class Arm:
    """One fine-tuning run: method ``method`` with ``n`` labelled cases of seed ``seed`` (fold ``fold``)."""

    method: str
    n: int
    seed: int
    fold: int
    train: tuple

    @property
    def key(self) -> str:
        return arm_key(self.method, self.n, self.seed)

    @property
    def tag(self) -> str:
        return self.key.replace("/", "_")


def arm_key(method: str, n: int, seed: int) -> str:
    """``"desd-5/seed0"``: how an arm is named in ``results.json`` and its folder (``desd-5_seed0``)."""
    return f"{method}-{n}/seed{seed}"


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


def method_counts(method: Method, config: ExperimentConfig, pool_size: int) -> list[int]:
    """The label counts of a method (its own ``counts`` or the experiment's), ``"all"`` resolved."""
    counts = method.counts if method.counts is not None else config.counts
    resolved = sorted({pool_size if c == "all" else int(c) for c in counts})
    if resolved[-1] > pool_size:
        field_name = f"methods.{method.name}.counts" if method.counts is not None else "counts"
        raise _fail(field_name, f"{resolved[-1]} labelled cases asked for, the target's training pool holds "
                                f"{pool_size}")
    return resolved


def plan_arms(config: ExperimentConfig, pool: Sequence[str], with_lesion: Optional[Sequence[str]] = None) -> list[Arm]:
    """Every arm, seed by seed and count by count, scratch first; one fold per ``(n, seed)``."""
    counts = {name: method_counts(m, config, len(pool)) for name, m in config.methods.items()}
    every = sorted({n for c in counts.values() for n in c})
    order = [SCRATCH] + [m for m in config.methods if m != SCRATCH]
    arms, fold = [], 0
    for seed in config.seeds:
        subsets = labelled_subsets(pool, every, seed, with_lesion)
        for n in every:
            members = [m for m in order if n in counts[m]]
            arms.extend(Arm(m, n, seed, fold, tuple(subsets[n])) for m in members)
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


def read_split(folder: Path) -> dict[str, list[str]]:
    """``pool`` (fold 0 train), ``val`` (fold 0 val) and ``test`` from ``nnunet-ssl split``'s files."""
    from nnunet_ssl.splits import TEST_FILE

    final, test = folder / "splits_final.json", folder / TEST_FILE
    for f in (final, test):
        if not f.is_file():
            raise _fail("split", f"{f} not found; run `nnunet-ssl split -d TARGET` first (or name the folder "
                                 "holding its files)")
    splits, held_out = json.loads(final.read_text(encoding="utf-8")), json.loads(test.read_text(encoding="utf-8"))
    pool, val, tests = list(splits[0]["train"]), list(splits[0]["val"]), list(held_out["test"])
    if not tests:
        raise _fail("split", f"{test} holds no test case")
    if not val:
        raise _fail("split", f"fold 0 of {final} has no validation case")
    if set(tests) & (set(pool) | set(val)):
        raise _fail("split", "test cases are also training or validation cases")
    return {"pool": pool, "val": val, "test": tests}


def cases_with_lesion(labels_folder: Path, identifiers: Sequence[str], file_ending: str) -> list[str]:
    """The identifiers whose label map in ``labels_folder`` holds a voxel above 0."""
    import SimpleITK as sitk

    return [c for c in identifiers
            if sitk.GetArrayFromImage(sitk.ReadImage(str(labels_folder / f"{c}{file_ending}"))).max() > 0]


# ---------------------------------------------------------------- running jobs side by side
def run_jobs(jobs: Sequence[Any], slots: Sequence[Optional[int]], work: Callable[[Any, Optional[int]], None]) -> None:
    """Run ``work(job, slot)`` for every job, at most one job per slot at a time, in job order.

    One slot (e.g. ``[None]``: the CPU) runs the jobs one after another in this
    thread. With several slots (GPU indices) a thread per slot takes the next job;
    the first error stops new jobs from starting and is raised once the running
    ones have ended.

    Example:
        >>> seen = []
        >>> run_jobs([1, 2, 3], [None], lambda job, slot: seen.append(job)); seen
        [1, 2, 3]
    """
    if len(slots) <= 1:
        for job in jobs:
            work(job, slots[0] if slots else None)
        return
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    errors: list[BaseException] = []

    def worker(slot):
        while not errors:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                work(job, slot)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- results
def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temporary file beside ``path``, then rename: a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def open_results(output: Path, config_json: dict, force: bool, fmt: str = FORMAT,
                 extendable: Sequence[str] = EXTENDABLE, entries: Sequence[str] = ENTRIES,
                 defaults: Optional[Mapping] = None) -> dict:
    """The results of ``output`` to continue, or fresh ones; refuse folders holding something else.

    A recorded run is continued when its config differs only in ``extendable`` fields
    (and its methods, when they differ, only by methods added or left out). With
    ``force`` only ``entries`` are removed first.
    """
    if output.exists() and not output.is_dir():
        raise UserError(f"{output} exists and is not a folder")
    if force and output.is_dir():
        remove_entries(output, entries)
    output.mkdir(parents=True, exist_ok=True)
    results_file = output / RESULTS_FILE
    if results_file.is_file():
        results = json.loads(results_file.read_text(encoding="utf-8"))
        if results.get("format") != fmt:
            raise UserError(f"{results_file} is not a results file of this kind ({fmt})")
        old, new = results["config"], config_json
        # a field the record lacks and ``defaults`` names came in after it was written; its default kept the
        # old behaviour
        old = {**{k: v for k, v in (defaults or {}).items() if k not in old}, **old}
        differ = sorted(k for k in set(old) | set(new) if k not in extendable and old.get(k) != new.get(k))
        old_m, new_m = old.get("methods") or {}, new.get("methods") or {}
        if isinstance(old_m, dict) and isinstance(new_m, dict):
            differ += [f"methods.{m}" for m in sorted(set(old_m) & set(new_m))  # a method's counts may change
                       if {k: v for k, v in old_m[m].items() if k != "counts"} !=
                       {k: v for k, v in new_m[m].items() if k != "counts"}]
        if differ:
            raise UserError(f"{output} holds a run with other settings ({', '.join(differ)}); continue it with "
                            "the same settings, choose another folder, or pass --force to start over")
        results["config"] = new
        return results
    if not force and any(output.iterdir()):
        raise UserError(f"output folder {output} is not empty and holds no {RESULTS_FILE}; choose another "
                        f"folder (or pass --force, which removes only these entries: {', '.join(entries)})")
    results = {"format": fmt, "config": config_json, "stages": {}, "arms": {}}
    write_json_atomic(results_file, results)
    return results


def read_evaluation(folder: Path, label: str = "1") -> dict:
    """Mean, median and per-case Dice of one label from ``nnunet-ssl evaluate``'s output folder."""
    import csv

    summary = json.loads((folder / "evaluation_summary.json").read_text(encoding="utf-8"))
    dice = summary["labels"][label]["metrics"]["dice"]
    with open(folder / "evaluation_per_case.csv", newline="", encoding="utf-8") as f:
        per_case = {row["case"]: float(row["dice"]) for row in csv.DictReader(f) if row["label"] == label}
    return {"dice_mean": float(dice["mean"]), "dice_median": float(dice["median"]), "dice_per_case": per_case}


# ---------------------------------------------------------------- statistics
def summarise(records: Mapping[str, Mapping], view: Optional[str] = None) -> dict:
    """Per ``method-n`` statistics over seeds and paired differences against scratch.

    ``view`` picks a sub-record (``"filtered"``: the evaluation with the lesion size
    filter) instead of the record itself. Returns:

    * ``groups``: ``{"desd-5": {"method", "n", "dice" (per seed), "per_case" (per seed),
      "mean", "median", "sd"}}``, scratch first, then the methods in order of appearance;
    * ``paired``: ``{"desd-5": {"method", "n", "per_seed": {seed: method - scratch},
      "mean", "median", "seeds": sign_test over the seeds, "cases": paired_test over
      (seed, case) pairs, "p_holm"}}`` over the seeds where both arms finished; ``p_holm``
      is the cases' Wilcoxon p Holm-adjusted over all comparisons. The seeds are the
      independent units (the test cases of one seed share its training run), so the
      sign test is the one to read when arms differ by whole seeds.

    Example:
        >>> r = {"scratch-2/seed0": {"method": "scratch", "n": 2, "seed": 0, "dice_mean": 0.5,
        ...                          "dice_per_case": {"a": 0.5}},
        ...      "ssl-2/seed0": {"method": "ssl", "n": 2, "seed": 0, "dice_mean": 0.7,
        ...                      "dice_per_case": {"a": 0.7}}}
        >>> round(summarise(r)["paired"]["ssl-2"]["mean"], 3)
        0.2
    """
    from nnunet_ssl.evaluation.stats import holm, paired_test, sign_test

    groups: dict[str, dict] = {}
    for record in records.values():
        values = record.get(view) if view else record
        if values is None:
            continue
        key = f"{record['method']}-{record['n']}"
        g = groups.setdefault(key, {"method": record["method"], "n": int(record["n"]), "dice": {}, "per_case": {}})
        g["dice"][int(record["seed"])] = float(values["dice_mean"])
        g["per_case"][int(record["seed"])] = dict(values.get("dice_per_case") or {})
    methods = [SCRATCH] + sorted({g["method"] for g in groups.values()} - {SCRATCH},
                                 key=lambda m: next(i for i, g in enumerate(groups.values()) if g["method"] == m))
    for g in groups.values():
        g["dice"], g["per_case"] = dict(sorted(g["dice"].items())), dict(sorted(g["per_case"].items()))
        values = list(g["dice"].values())
        g["mean"], g["median"] = statistics.fmean(values), statistics.median(values)
        g["sd"] = statistics.stdev(values) if len(values) > 1 else float("nan")
    groups = dict(sorted(groups.items(), key=lambda kv: (methods.index(kv[1]["method"]), kv[1]["n"])))
    paired = {}
    for key, g in groups.items():
        base = groups.get(f"{SCRATCH}-{g['n']}")
        if g["method"] == SCRATCH or base is None:
            continue
        seeds = [s for s in g["dice"] if s in base["dice"]]
        if not seeds:
            continue
        diffs = {s: g["dice"][s] - base["dice"][s] for s in seeds}
        a, b = [], []
        for s in seeds:
            shared = sorted(set(g["per_case"][s]) & set(base["per_case"][s]))
            a += [g["per_case"][s][c] for c in shared]
            b += [base["per_case"][s][c] for c in shared]
        paired[key] = {"method": g["method"], "n": g["n"], "per_seed": diffs,
                       "mean": statistics.fmean(diffs.values()), "median": statistics.median(diffs.values()),
                       "seeds": sign_test(list(diffs.values())), "cases": paired_test(a, b)}
    for entry, p in zip(paired.values(), holm([e["cases"]["p_wilcoxon"] for e in paired.values()])):
        entry["p_holm"] = p
    return {"groups": groups, "paired": paired}


# ---------------------------------------------------------------- report
def _num(v: float, fmt: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def format_tables(summary: Mapping, ensembles: Optional[Mapping] = None, view: Optional[str] = None) -> list[str]:
    """The arm table and the paired table (Markdown) of a summary; the seed ensembles when given."""
    rows = [[g["method"], str(g["n"]), str(len(g["dice"])), _num(g["mean"]), _num(g["sd"]), _num(g["median"]),
             ", ".join(f"{s}: {v:.3f}" for s, v in g["dice"].items())] for g in summary["groups"].values()]
    lines = _table(["method", "labelled", "seeds", "mean Dice", "sd", "median", "per seed"], rows)
    if summary["paired"]:
        rows = [[p["method"], str(p["n"]), str(len(p["per_seed"])), f"{p['mean']:+.3f}",
                 ", ".join(f"{s}: {v:+.3f}" for s, v in p["per_seed"].items()),
                 "{better}/{worse}/{tied}".format(**p["seeds"]), _num(p["seeds"]["p"], ".3g"), str(p["cases"]["n"]),
                 _num(p["cases"]["mean_diff"], "+.3f"), _num(p["cases"]["p_wilcoxon"], ".3g"),
                 _num(p["p_holm"], ".3g"), _num(p["cases"]["rank_biserial"], "+.2f")]
                for p in summary["paired"].values()]
        lines += ["", "Paired against scratch at the same count (same labelled cases and seed):", ""]
        lines += _table(["method", "labelled", "seeds", "mean difference", "per seed",
                         "seeds better/worse/tied", "sign test p (seeds)", "case pairs",
                         "case mean difference", "Wilcoxon p", "Holm p", "rank-biserial r"], rows)
    if ensembles:
        rows = [[e["method"], str(e["n"]), ", ".join(map(str, e["seeds"])),
                 _num((e.get(view) if view else e)["dice_mean"]), _num((e.get(view) if view else e)["dice_median"])]
                for e in ensembles.values() if (e.get(view) if view else e) is not None]
        lines += ["", "Majority vote of the seeds:", ""]
        lines += _table(["method", "labelled", "seeds", "mean Dice", "median"], rows)
    return lines


def plot_curves(summary: Mapping, path: Path, title: str = "Dice against labelled cases") -> Path:
    """Dice against the number of labelled cases: one line per method (mean over seeds), seeds as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    methods = list(dict.fromkeys(g["method"] for g in summary["groups"].values()))
    for i, method in enumerate(methods):
        groups = sorted((g for g in summary["groups"].values() if g["method"] == method), key=lambda g: g["n"])
        colour = f"C{i}"
        ax.plot([g["n"] for g in groups], [g["mean"] for g in groups], "-o", color=colour, label=f"{method} (mean)")
        for g in groups:
            ax.scatter([g["n"]] * len(g["dice"]), list(g["dice"].values()), color=colour, alpha=0.4, s=14)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("labelled training cases")
    ax.set_ylabel("test Dice (mean over cases)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_boxes(summary: Mapping, path: Path) -> Path:
    """Box plots of the per-case test Dice of each method and count (cases of every seed pooled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted(summary["groups"].values(), key=lambda g: (g["n"], g["method"] != SCRATCH))
    methods = list(dict.fromkeys(g["method"] for g in summary["groups"].values()))
    data = [[v for per_seed in g["per_case"].values() for v in per_seed.values()] or [float("nan")] for g in groups]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(groups) + 2), 4))
    boxes = ax.boxplot(data, patch_artist=True)
    for box, g in zip(boxes["boxes"], groups):
        box.set_facecolor(f"C{methods.index(g['method'])}")
        box.set_alpha(0.6)
    ax.set_xticks(range(1, len(groups) + 1), [f"{g['method']}\n{g['n']}" for g in groups], fontsize=8)
    ax.set_ylabel("test Dice per case")
    ax.set_title("Per-case test Dice, seeds pooled")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_report(output: Path, config: ExperimentConfig, results: Mapping, summary: Mapping,
                 filtered: Optional[Mapping]) -> Path:
    """``report.md`` with the tables of every arm, the paired statistics and the plots."""
    c = config
    lines = ["# Label-efficiency experiment", "",
             f"Target `{results['datasets']['target']}`; test cases: {len(results['datasets']['test'])}; "
             f"labelled pool: {len(results['datasets']['pool'])}; validation: {len(results['datasets']['val'])}.",
             f"Fine-tuning: `{c.finetune['trainer']}`"
             + (f" (settings {json.dumps(c.finetune['settings'])}; scratch: `{FINETUNE_TRAINER}`)"
                if c.finetune["trainer"] != FINETUNE_TRAINER else "")
             + f" on `{c.configuration}`, {c.finetune['epochs']} epochs x {c.finetune['iterations']} iterations"
             + f"; seeds {', '.join(map(str, c.seeds))}.", "",
             "Methods:", ""]
    for m in c.methods.values():
        lines.append(f"- `{m.name}`: " + ("nnU-Net's own initialisation" if m.is_scratch else
                                         f"`{m.trainer}` on `{results['datasets']['pools'][m.pool]}`, "
                                         f"{'the encoder' if m.transfer == 'encoder' else 'the whole network'} "
                                         f"transferred; settings {json.dumps(m.settings)}"))
    lines += ["", "## Test Dice (label %d)" % c.label, ""]
    lines += format_tables(summary, results.get("ensembles"))
    if filtered is not None:
        lines += ["", f"## Test Dice with lesions under {c.min_lesion_ml:g} mL removed (ground truth and "
                      "prediction)", ""]
        lines += format_tables(filtered, results.get("ensembles"), view="filtered")
    lines += ["", f"![Dice against labelled cases]({CURVE_PLOT})", "", f"![Per-case Dice]({BOX_PLOT})", "",
              "Each seed draws the labelled cases (the first n of the pool shuffled by the seed, nested over "
              "counts) and seeds the fine-tuning; the arms of one count and seed share both, so differences "
              "are paired. A seed is better or worse when its difference exceeds 0.01 Dice; the sign test counts "
              "each seed once. The Wilcoxon test pairs the test cases of every shared seed; the cases of one "
              "seed share its training run, so where arms differ by whole seeds (a run that finds the lesions "
              "against one that does not) it overstates the evidence: read the sign test there.", ""]
    path = output / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- the run
class _Experiment:
    """One run of an experiment in ``output`` (see :func:`run_experiment`)."""

    def __init__(self, config: ExperimentConfig, echo: Callable[[str], None] = print):
        from nnunet_ssl.planning import default_plans_identifier

        check_methods(config)
        self.c, self.echo, self.t0 = config, echo, time.time()
        raw = config.nnunet_raw
        if not raw.is_dir():
            raise _fail("nnUNet_raw", f"{raw} is not a folder")
        self.target = find_dataset(raw, config.target)
        self.pools = {}
        for name, value in config.pools.items():
            try:
                self.pools[name] = find_dataset(raw, value)
            except UserError as e:
                raise _fail(f"pools.{name}", str(e)) from None
        if not any(not m.is_scratch for m in config.methods.values()):
            raise _fail("methods", "name at least one SSL method besides scratch")
        split_folder = config.split
        if split_folder is None:
            if not os.environ.get("nnUNet_preprocessed"):
                raise _fail("split", "not given and $nnUNet_preprocessed is not set")
            split_folder = Path(os.environ["nnUNet_preprocessed"]) / self.target
        self.split = read_split(split_folder)
        dataset_json = json.loads((raw / self.target / "dataset.json").read_text(encoding="utf-8"))
        self.file_ending = dataset_json["file_ending"]
        self.channels = sorted(int(k) for k in dataset_json["channel_names"])
        labels = raw / self.target / "labelsTr"
        missing = [c for c in self.split["pool"] + self.split["val"] + self.split["test"]
                   if not (labels / f"{c}{self.file_ending}").is_file()]
        if missing:
            raise _fail("split", f"{len(missing)} case(s) of the split have no label in {labels}: "
                                 f"{', '.join(missing[:5])}")
        if str(config.label) not in {str(v) for v in dataset_json["labels"].values()}:
            raise _fail("label", f"{config.label} is not a label of {self.target} ({dataset_json['labels']})")
        lesion = cases_with_lesion(labels, self.split["pool"], self.file_ending)
        self.arms = plan_arms(config, self.split["pool"], lesion)
        self.ssl_plans = default_plans_identifier(config.plan.get("planner", "default"))
        self.budget = f"{config.configuration}_budget"

    def open(self, output: Path, force: bool) -> "_Experiment":
        """Open (or continue) the experiment folder and its nnU-Net environment."""
        config = self.c
        self.output = Path(output).resolve()
        self.results = open_results(self.output, config.raw, force)
        self.results["datasets"] = {"target": self.target, "pools": self.pools, **self.split}
        self.lock = threading.Lock()
        self.env = demo_environment(self.output)
        return self

    def describe(self) -> str:
        """What the experiment would run: datasets, methods and arms."""
        lines = [f"target {self.target}: {len(self.split['pool'])} labelled pool, {len(self.split['val'])} "
                 f"validation, {len(self.split['test'])} test case(s)"]
        for m in self.c.methods.values():
            arms = [a for a in self.arms if a.method == m.name]
            counts = sorted({a.n for a in arms})
            how = "nnU-Net's initialisation" if m.is_scratch else f"{m.trainer} on {self.pools[m.pool]}"
            lines.append(f"  {m.name}: {how}; counts {', '.join(map(str, counts))}; {len(arms)} arm(s)")
        lines.append(f"{len(self.arms)} arms in {len({a.fold for a in self.arms})} folds, seeds "
                     f"{', '.join(map(str, self.c.seeds))}; {sum(not m.is_scratch for m in self.c.methods.values())} "
                     "pretraining(s)")
        return "\n".join(lines)

    # -- bookkeeping
    def save(self) -> None:
        with self.lock:
            write_json_atomic(self.output / RESULTS_FILE, self.results)

    def progress(self, text: str) -> None:
        self.echo(f"{text}  (elapsed {time.time() - self.t0:.0f} s)")

    def runner(self, slot: Optional[int], **env) -> Runner:
        run_env = dict(self.env, **env)
        if slot is not None:
            run_env["CUDA_VISIBLE_DEVICES"] = str(slot)
        return Runner(self.output, run_env, 0, self.echo)

    @property
    def slots(self) -> list:
        return list(self.c.gpus) or [None]

    def target_plans(self, pool: str) -> str:
        from nnunet_ssl.target_plans import default_plans_name

        return default_plans_name(self.ssl_plans, self.pools[pool])

    def method_plans(self, method: Method) -> str:
        return f"{self.ssl_plans}_{method.name}"

    def checkpoint(self, method: Method) -> Path:
        return (self.output / "nnUNet_results" / self.pools[method.pool] /
                f"{method.trainer}__{self.method_plans(method)}__{self.c.configuration}" / "fold_all" /
                "checkpoint_final.pth")

    def weights(self, method: Method) -> Path:
        return self.checkpoint(method) if method.transfer == "whole" else self.output / "pretrained" / f"{method.name}.pth"

    # -- stages
    def link_data(self) -> None:
        """The datasets as links in the experiment's nnUNet_raw; the test cases as links under ``test/``."""
        raw = Path(self.env["nnUNet_raw"])
        for name in {self.target, *self.pools.values()}:
            link = raw / name
            if link.is_symlink() or link.exists():
                if link.resolve() != (self.c.nnunet_raw / name).resolve():
                    raise UserError(f"{link} is not a link to {self.c.nnunet_raw / name}; pass --force to start over")
                continue
            link.symlink_to(self.c.nnunet_raw / name, target_is_directory=True)
        source = self.c.nnunet_raw / self.target
        for sub in ("images", "labels"):
            folder = self.output / "test" / sub
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
        for case in self.split["test"]:
            for ch in self.channels:
                name = f"{case}_{ch:04d}{self.file_ending}"
                (self.output / "test" / "images" / name).symlink_to(source / "imagesTr" / name)
            name = f"{case}{self.file_ending}"
            (self.output / "test" / "labels" / name).symlink_to(source / "labelsTr" / name)

    def stage(self, name: str, title: str, work: Callable[[], None]) -> None:
        with self.lock:
            done = name in self.results["stages"]
        if done:
            self.echo(f"[{name}] recorded by an earlier run, skipped")
            return
        self.progress(f"[{name}] {title}")
        t = time.time()
        work()
        with self.lock:
            self.results["stages"][name] = {"elapsed_s": round(time.time() - t, 1)}
        self.save()

    def plan_pool(self, pool: str) -> None:
        c, name = self.c, self.pools[pool]
        options = []
        for key, flag in (("planner", "--planner"), ("base_features", "--base-features"),
                          ("max_features", "--max-features"), ("gpu_memory_gb", "--gpu-memory-gb")):
            if key in c.plan:
                options += [flag, str(c.plan[key])]
        nproc = str(c.plan.get("num_processes", 2))
        run = self.runner(None)
        run.command([_bin("nnunet-ssl"), "plan", "-d", name, "-c", c.configuration, "-np", nproc, "--force",
                     *options], f"plan_{pool}")
        run.command([_bin("nnunet-ssl"), "plan-target", "-d", self.target, "--from", name, "-p", self.ssl_plans,
                     "-c", c.configuration, "-np", nproc, "--force"], f"plan_target_{pool}")

    def write_method_plans(self, method: Method) -> None:
        """The pool's plans under the method's own name, with the method's settings block (same data)."""
        folder = Path(self.env["nnUNet_preprocessed"]) / self.pools[method.pool]
        plans = json.loads((folder / f"{self.ssl_plans}.json").read_text(encoding="utf-8"))
        plans["plans_name"] = self.method_plans(method)
        configuration = plans["configurations"][self.c.configuration]
        block = settings_block(method.trainer)
        configuration[block] = {**(configuration.get(block) or {}), **method.settings}
        write_json_atomic(folder / f"{self.method_plans(method)}.json", plans)

    def pretrain(self, method: Method, slot: Optional[int]) -> None:
        def work():
            self.write_method_plans(method)
            # --c: an interrupted pretraining continues from its latest checkpoint (nnU-Net starts anew without one)
            self.runner(slot).command(
                [_bin("nnUNetv2_train"), self.pools[method.pool], self.c.configuration, "all", "-tr", method.trainer,
                 "-p", self.method_plans(method), "-device", self.c.device, "--c"], f"pretrain_{method.name}",
                progress_marker="train_loss")

        self.stage(f"pretrain:{method.name}", f"pretraining {method.name}: nnUNetv2_train "
                                              f"{self.pools[method.pool]} {self.c.configuration} all -tr "
                                              f"{method.trainer}" + (f" (GPU {slot})" if slot is not None else ""),
                   work)
        if method.transfer == "encoder":
            self.weights(method).parent.mkdir(exist_ok=True)
            self.stage(f"transfer:{method.name}", f"transferring the encoder of {method.name}", lambda: self.runner(
                slot).command([_bin("nnunet-ssl-transfer"), str(self.checkpoint(method)), "-d", self.target, "-p",
                               self.target_plans(method.pool), "-c", self.c.configuration, "-o",
                               str(self.weights(method)), "--force"], f"transfer_{method.name}"))

    def write_folds(self) -> None:
        pre = Path(self.env["nnUNet_preprocessed"]) / self.target
        write_json_atomic(pre / "splits_final.json", folds(self.arms, self.split["val"]))
        seeds = {arm.fold: fold_seed(arm.n, arm.seed) for arm in self.arms}
        f = self.c.finetune
        for pool in self.pools:
            plans_file = pre / f"{self.target_plans(pool)}.json"
            plans = json.loads(plans_file.read_text(encoding="utf-8"))
            plans["configurations"][self.budget] = {
                "inherits_from": self.c.configuration,
                "budget": {"num_epochs": f["epochs"], "num_iterations_per_epoch": f["iterations"],
                           "num_val_iterations_per_epoch": f["val_iterations"],
                           "final_validation": f["final_validation"],
                           "fold_seeds": [seeds[k] for k in range(len(seeds))]},
                **({"finetune": dict(f["settings"])} if f["settings"] else {})}
            write_json_atomic(plans_file, plans)

    def evaluate(self, run: Runner, pred: Path, folder: Path, name: str) -> dict:
        args = [_bin("nnunet-ssl"), "evaluate", str(pred), str(self.output / "test" / "labels"), "--labels",
                str(self.c.label), "-fe", self.file_ending]
        run.command(args + ["-o", str(folder / "evaluation")], f"evaluate_{name}")
        record = read_evaluation(folder / "evaluation", str(self.c.label))
        if self.c.min_lesion_ml > 0:
            run.command(args + ["-o", str(folder / "evaluation_filtered"), "--min-lesion-ml",
                                f"{self.c.min_lesion_ml:g}", "--filter-prediction"], f"evaluate_{name}_filtered")
            record["filtered"] = read_evaluation(folder / "evaluation_filtered", str(self.c.label))
        return record

    def run_arm(self, arm: Arm, slot: Optional[int]) -> dict:
        """Fine-tune, predict and evaluate one arm in its own folder; return its record."""
        method = self.c.methods[arm.method]
        pool = method.pool if not method.is_scratch else next(iter(self.pools))
        folder = self.output / "arms" / arm.tag
        if folder.exists():  # what an interrupted earlier attempt left: the arm starts again
            shutil.rmtree(folder)
        (folder / "nnUNet_results").mkdir(parents=True)
        run = self.runner(slot, nnUNet_results=str(folder / "nnUNet_results"))
        plans = self.target_plans(pool)
        extra = [] if method.is_scratch else ["-pretrained_weights", str(self.weights(method))]
        # the strategy (freezing, encoder learning rate, ...) is for pretrained encoders; scratch trains as nnU-Net
        trainer = FINETUNE_TRAINER if method.is_scratch else self.c.finetune["trainer"]
        run.command([_bin("nnUNetv2_train"), self.target, self.budget, str(arm.fold), "-tr", trainer,
                     "-p", plans, "-device", self.c.device, *extra], f"finetune_{arm.tag}", progress_marker="Pseudo dice")
        model = folder / "nnUNet_results" / self.target / f"{trainer}__{plans}__{self.budget}"
        pred = folder / "predictions"
        run.command([_bin("nnUNetv2_predict_from_modelfolder"), "-i", str(self.output / "test" / "images"), "-o",
                     str(pred), "-m", str(model), "-f", str(arm.fold), "-device", self.c.device, "-npp", "1",
                     "-nps", "1"], f"predict_{arm.tag}")
        return {"method": arm.method, "n": arm.n, "seed": arm.seed, "fold": arm.fold, "train_cases": list(arm.train),
                "fold_seed": fold_seed(arm.n, arm.seed), **self.evaluate(run, pred, folder, arm.tag),
                "finished": time.strftime("%Y-%m-%d %H:%M:%S")}

    def ensemble(self, method: str, n: int) -> dict:
        folder = self.output / "ensembles" / f"{method}-{n}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        run = self.runner(None)
        inputs = [str(self.output / "arms" / Arm(method, n, s, 0, ()).tag / "predictions") for s in self.c.seeds]
        run.command([_bin("nnunet-ssl"), "ensemble", "-i", *inputs, "-o", str(folder / "predictions"), "-m",
                     "majority", "-fe", self.file_ending], f"ensemble_{method}-{n}")
        return {"method": method, "n": n, "seeds": list(self.c.seeds),
                **self.evaluate(run, folder / "predictions", folder, f"ensemble_{method}-{n}")}

    # -- the whole run
    def run(self) -> dict:
        c, results = self.c, self.results
        for arm in self.arms:
            recorded = results["arms"].get(arm.key)
            if recorded and recorded["train_cases"] != list(arm.train):
                raise UserError(f"{arm.key} in {self.output / RESULTS_FILE} trained on other cases than this run "
                                "selects; pass --force to start over")
        self.save()
        self.link_data()
        for pool in self.pools:
            self.stage(f"plan:{pool}", f"planning {self.pools[pool]} and the target from it (nnunet-ssl plan, "
                                       "plan-target)", lambda pool=pool: self.plan_pool(pool))
        self.write_folds()
        todo = [a for a in self.arms if a.key not in results["arms"]]
        needed = [m for m in c.methods.values() if not m.is_scratch and
                  (any(a.method == m.name for a in todo) or f"pretrain:{m.name}" in results["stages"])]
        run_jobs(needed, self.slots, self.pretrain)
        self.echo(f"{len(self.arms)} arms: {len(self.arms) - len(todo)} recorded, {len(todo)} to run "
                  f"({c.finetune['epochs']} epochs x {c.finetune['iterations']} iterations each)")
        counter = iter(range(1, len(todo) + 1))

        def arm_job(arm: Arm, slot: Optional[int]) -> None:
            with self.lock:
                i = next(counter)
            where = f" on GPU {slot}" if slot is not None else ""
            self.progress(f"[arm {i}/{len(todo)}] {arm.key}: fine-tuning on {arm.n} case(s), fold {arm.fold}{where}")
            t = time.time()
            record = self.run_arm(arm, slot)
            record["elapsed_s"] = round(time.time() - t, 1)
            with self.lock:
                results["arms"][arm.key] = record
                finished = sum(a.key in results["arms"] for a in self.arms)
            self.save()
            self.echo(f"      {arm.key}: test Dice mean {record['dice_mean']:.3f}, median {record['dice_median']:.3f} "
                      f"({record['elapsed_s']:.0f} s; {finished}/{len(self.arms)} arms done)")

        run_jobs(todo, self.slots, arm_job)
        keys = {a.key for a in self.arms}
        records = {k: v for k, v in results["arms"].items() if k in keys}
        if c.ensemble:
            ensembles = results.setdefault("ensembles", {})
            for method, n in dict.fromkeys((a.method, a.n) for a in self.arms):
                key = f"{method}-{n}"
                if ensembles.get(key, {}).get("seeds") != list(c.seeds):
                    self.progress(f"[ensemble] {key}: majority vote of seeds {', '.join(map(str, c.seeds))}")
                    ensembles[key] = self.ensemble(method, n)
                    self.save()
            results["ensembles"] = {k: v for k, v in ensembles.items()
                                    if (v["method"], v["n"]) in {(a.method, a.n) for a in self.arms}}
        summary = summarise(records)
        filtered = summarise(records, view="filtered") if c.min_lesion_ml > 0 else None
        results["summary"] = json.loads(json.dumps(summary, default=float))
        if filtered is not None:
            results["summary_filtered"] = json.loads(json.dumps(filtered, default=float))
        self.save()
        plot_curves(summary, self.output / CURVE_PLOT)
        plot_boxes(summary, self.output / BOX_PLOT)
        report = write_report(self.output, c, results, summary, filtered)
        self.echo("")
        self.echo("\n".join(format_tables(summary, results.get("ensembles"))))
        self.progress(f"Report in {report}; results in {self.output / RESULTS_FILE}")
        return summary


def run_experiment(config: ExperimentConfig, output: str | os.PathLike, force: bool = False,
                   echo: Callable[[str], None] = print) -> dict:
    """Run (or continue) an experiment in ``output``; return its summary (see :func:`summarise`).

    Everything is checked before any work: the config (:func:`parse_config`), the
    trainers and their settings, the datasets, the split and the label counts.

    Example:
        >>> run_experiment(load_config("experiment.json"), "my_experiment")  # doctest: +SKIP
    """
    return _Experiment(config, echo).open(Path(output), force).run()


def plan_summary(config: ExperimentConfig) -> str:
    """Check an experiment as :func:`run_experiment` does, without writing anything; describe its arms."""
    return _Experiment(config).describe()
