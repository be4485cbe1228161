"""Label-efficiency benchmark on phantoms: does SSL pretraining help when labels are few?

The benchmark is a fixed instance of ``nnunet-ssl experiment`` (:mod:`nnunet_ssl.experiment`)
on synthetic stroke phantoms. For each label count ``n`` and seed ``s`` stock nnU-Net is
fine-tuned twice on the same ``n`` labelled cases: from scratch (arm ``scratch-n``) and
from the SSL pretraining (arm ``ssl-n``), with the same budget and seed, and both are
scored on held-out test cases, so ``ssl - scratch`` is paired. Scratch-only arms at larger
counts answer "how many labels is pretraining worth": ``ssl-2`` against ``scratch-7``
reads "pretraining saves ~3.5x the labels" when they tie.

In the output folder:

* ``data/``: the phantoms (an unlabelled SSL dataset of the pool, validation and extra
  images, never a test image; a labelled target dataset) and their split files, as
  ``nnunet-ssl split`` writes them;
* ``experiment/``: the experiment's folder (nnU-Net's folders, one folder per arm, logs,
  ``results.json``, ``report.md`` and the plots; see :mod:`nnunet_ssl.experiment`);
* ``results.json``: the benchmark's settings and stages; ``experiment.json``: the
  experiment config the benchmark runs.

Every SSL trainer of ``ssl_trainers`` is one method of the experiment, named by
:func:`method_name` (``desd``, ``mae``, ``modelsgenesis``, ...), all pretrained on the same
unlabelled phantoms and fine-tuned on the same subsets: DeSD with the ``ssl`` settings and
its encoder transferred, every other trainer with its own settings block (the run length of
``ssl``, then its entry of ``pretext``), fine-tuned from the whole pretrained network where
the method trains a decoder (:data:`WHOLE_NETWORK_TRAINERS`). A rerun in the same folder
continues a killed run.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping, Optional

from nnunet_ssl.demo import DemoConfig
from nnunet_ssl.errors import UserError
from nnunet_ssl.experiment import open_results, trainer_settings, write_json_atomic

FORMAT = "nnunet_ssl.label_efficiency/1"
SSL_ID, SSL_NAME = 992, "LabelEffSSL"
TARGET_ID, TARGET_NAME = 993, "LabelEffStroke"
FIRST_TEST_CASE = 10_000
RESULTS_FILE, EXPERIMENT_FILE = "results.json", "experiment.json"
ENTRIES = ("data", "experiment", EXPERIMENT_FILE, RESULTS_FILE)
DESD = "nnUNetTrainerDeSD"
# SSL trainers whose checkpoint holds the whole U-Net of the plans (nnU-Net's -pretrained_weights loads it):
# the restoration methods, CM-UNet and rotation are fine-tuned from the whole network; the others
# (SimCLR, MoCo) from their encoder through nnunet-ssl-transfer
WHOLE_NETWORK_TRAINERS = ("nnUNetTrainerMAE", "nnUNetTrainerModelsGenesis", "nnUNetTrainerInpainting",
                          "nnUNetTrainerCMUNet", "nnUNetTrainerRotation")
# names of the ``ssl`` settings that set the run length; every other method takes them unless its ``pretext`` entry does
RUN_LENGTH = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch")
# settings a rerun may change: they only add or drop arms or methods, each of which stands on its own
# (a method kept must keep its settings: the experiment refuses a change of them, naming the method)
EXTENDABLE = ("counts", "scratch_counts", "seeds", "device", "ssl_trainers", "pretext")


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
    variation: bool = False  # acquisition variation per phantom (offset, smooth field, noise, rotation)
    base_features: int = DemoConfig.base_features
    gpu_memory_gb: float = DemoConfig.gpu_memory_gb
    epochs: int = 20
    iterations: int = 40
    val_iterations: int = 5
    # nnU-Net's prediction of the validation cases after training: not used here (the test cases are)
    final_validation: bool = False
    ssl: dict = field(default_factory=lambda: dict(DemoConfig().ssl))
    ssl_trainers: tuple[str, ...] = (DESD,)
    # per trainer other than DeSD, its settings block (e.g. ``ssl_mae``); a trainer left out takes its
    # defaults with the run length of ``ssl``
    pretext: dict = field(default_factory=dict)
    data_seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        for name in ("counts", "scratch_counts", "seeds", "shape"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "ssl_trainers", tuple(str(t) for t in self.ssl_trainers))
        object.__setattr__(self, "pretext", dict(self.pretext or {}))
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
        if not self.ssl_trainers:
            raise UserError("give at least one SSL trainer")
        names = [method_name(t) for t in self.ssl_trainers]
        if len(set(names)) < len(names):
            raise UserError(f"each SSL trainer once, got {list(self.ssl_trainers)}")
        for trainer, values in self.pretext.items():
            if trainer not in self.ssl_trainers or trainer == DESD:
                others = [t for t in self.ssl_trainers if t != DESD]
                raise UserError(f"pretext settings are given per SSL trainer other than {DESD} "
                                f"({', '.join(others) or 'none given'}), got {trainer!r}")
            if not isinstance(values, dict):
                raise UserError(f"pretext settings of {trainer} must be a JSON object")
        for trainer in self.ssl_trainers:
            if trainer != DESD:
                try:
                    pretext_settings_class(trainer).from_dict(pretext_block(self, trainer))
                except ValueError as e:
                    raise UserError(str(e)) from None

    def whole_network(self, trainer: str) -> bool:
        """Whether ``trainer``'s checkpoint is fine-tuned from directly (no ``nnunet-ssl-transfer``)."""
        return trainer in WHOLE_NETWORK_TRAINERS

    @property
    def methods(self) -> list[str]:
        """The experiment's SSL method names, in the order of ``ssl_trainers``."""
        return [method_name(t) for t in self.ssl_trainers]

    @classmethod
    def from_dict(cls, values: Mapping) -> "BenchmarkConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def method_name(trainer: str) -> str:
    """The experiment's name of an SSL trainer's method.

    Example:
        >>> method_name("nnUNetTrainerModelsGenesis")
        'modelsgenesis'
    """
    name = trainer.removeprefix("nnUNetTrainer").lower()
    if not name or name == "scratch":
        raise UserError(f"not an SSL trainer name: {trainer!r}")
    return name


def pretext_settings_class(trainer: str):
    """The settings class (with its plans block name ``BLOCK``) of a pretext trainer."""
    return trainer_settings(trainer)


def pretext_block(config: "BenchmarkConfig", trainer: str) -> dict:
    """``trainer``'s block of the SSL plans: the run length of ``config.ssl``, then its ``config.pretext`` entry.

    Example:
        >>> pretext_block(BenchmarkConfig(ssl={"num_epochs": 3}, ssl_trainers=["nnUNetTrainerMAE"],
        ...                               pretext={"nnUNetTrainerMAE": {"mask_ratio": 0.5}}), "nnUNetTrainerMAE")
        {'num_epochs': 3, 'mask_ratio': 0.5}
    """
    block = {k: config.ssl[k] for k in RUN_LENGTH if k in config.ssl}
    block.update(config.pretext.get(trainer, {}))
    return block


def case_ids(config: BenchmarkConfig) -> dict[str, list[str]]:
    """Case identifiers of the target dataset (all in imagesTr): ``pool``, ``val`` and ``test``."""
    pool = [f"case_{i:03d}" for i in range(config.n_pool)]
    val = [f"case_{i:03d}" for i in range(config.n_pool, config.n_pool + config.n_val)]
    test = [f"case_{i:03d}" for i in range(FIRST_TEST_CASE, FIRST_TEST_CASE + config.n_test)]
    return {"pool": pool, "val": val, "test": test}


def write_data(data: Path, config: BenchmarkConfig) -> None:
    """The phantom datasets in ``data/nnUNet_raw`` and their split files in ``data/split``.

    The test cases are written as nnU-Net test cases and then moved into the training
    folders, where ``nnunet-ssl split`` leaves its held-out cases.
    """
    from nnunet_ssl.phantom import write_phantom_dataset
    from nnunet_ssl.splits import TEST_FILE

    c, raw = config, data / "nnUNet_raw"
    if data.exists():  # what an interrupted earlier attempt left
        shutil.rmtree(data)
    write_phantom_dataset(raw, SSL_ID, SSL_NAME, n_train=c.n_pool + c.n_val + c.n_unlabelled, shape=c.shape,
                          label="brain", seed=c.data_seed, lesion_drop_hu=c.lesion_drop_hu, variation=c.variation)
    target = write_phantom_dataset(raw, TARGET_ID, TARGET_NAME, n_train=c.n_pool + c.n_val, n_test=c.n_test,
                                   shape=c.shape, label="lesion", seed=c.data_seed, first_test_case=FIRST_TEST_CASE,
                                   lesion_drop_hu=c.lesion_drop_hu, variation=c.variation)
    for src, dst in (("imagesTs", "imagesTr"), ("labelsTs", "labelsTr")):
        for f in sorted((target / src).iterdir()):
            f.rename(target / dst / f.name)
        (target / src).rmdir()
    dataset_json = json.loads((target / "dataset.json").read_text(encoding="utf-8"))
    dataset_json["numTraining"] = c.n_pool + c.n_val + c.n_test
    write_json_atomic(target / "dataset.json", dataset_json)
    ids, split = case_ids(c), data / "split"
    split.mkdir()
    write_json_atomic(split / "splits_final.json", [{"train": ids["pool"], "val": ids["val"]}])
    write_json_atomic(split / TEST_FILE, {"test": ids["test"]})


def experiment_config(config: BenchmarkConfig, data: Path) -> dict:
    """The ``nnunet-ssl experiment`` config of the benchmark: ``scratch`` and one method per SSL trainer."""
    c = config
    methods: dict = {"scratch": {"counts": sorted(set(c.counts) | set(c.scratch_counts))}}
    for trainer in c.ssl_trainers:
        method = {"trainer": trainer, "pool": "ssl", "counts": list(c.counts),
                  "settings": dict(c.ssl) if trainer == DESD else pretext_block(c, trainer)}
        if c.whole_network(trainer):
            method["transfer"] = "whole"
        methods[method_name(trainer)] = method
    return {"target": str(TARGET_ID), "pools": {"ssl": str(SSL_ID)}, "nnUNet_raw": str(data / "nnUNet_raw"),
            "split": str(data / "split"),
            "methods": methods,
            "counts": list(c.counts), "seeds": list(c.seeds),
            "finetune": {"epochs": c.epochs, "iterations": c.iterations, "val_iterations": c.val_iterations,
                         "final_validation": c.final_validation},
            "plan": {"base_features": c.base_features, "gpu_memory_gb": c.gpu_memory_gb, "num_processes": 1},
            "device": c.device}


def scratch_near(summary: Mapping, near_factor: float = 3.5, tolerance: float = 0.25) -> dict:
    """``{n: m}``: for each count ``n`` of an SSL method, the scratch count ``m`` closest to
    ``near_factor * n`` within ``tolerance`` (relative).

    Example:
        >>> g = {"scratch-7": {"method": "scratch", "n": 7}, "mae-2": {"method": "mae", "n": 2}}
        >>> scratch_near({"groups": g})
        {2: 7}
    """
    groups = summary["groups"].values()
    scratch = [g["n"] for g in groups if g["method"] == "scratch"]
    near = {}
    for n in sorted({g["n"] for g in groups if g["method"] != "scratch"}):
        candidates = [m for m in scratch if abs(m - near_factor * n) <= tolerance * near_factor * n]
        if candidates:
            near[n] = min(candidates, key=lambda m: (abs(m - near_factor * n), m))
    return near


def run_benchmark(output: str | os.PathLike, config: BenchmarkConfig = BenchmarkConfig(), force: bool = False,
                  echo: Callable[[str], None] = print) -> dict:
    """Run (or continue) the benchmark in ``output``; return the experiment's summary (see
    :func:`nnunet_ssl.experiment.summarise`).

    Example:
        >>> run_benchmark("le_run", BenchmarkConfig(counts=(2, 4), seeds=(0, 1)))  # doctest: +SKIP
    """
    from nnunet_ssl.experiment import parse_config, run_experiment

    output = Path(output).resolve()
    results = open_results(output, config.to_dict(), force, fmt=FORMAT, extendable=EXTENDABLE, entries=ENTRIES,
                           defaults=BenchmarkConfig().to_dict())
    data = output / "data"
    if "data" in results["stages"]:
        echo("[data] recorded by an earlier run, skipped")
    else:
        echo(f"[data] writing phantoms: {config.n_pool + config.n_val + config.n_unlabelled} for SSL; "
             f"{config.n_pool} labelled pool + {config.n_val} validation + {config.n_test} test for segmentation")
        t = time.time()
        write_data(data, config)
        results["stages"]["data"] = {"elapsed_s": round(time.time() - t, 1)}
        write_json_atomic(output / RESULTS_FILE, results)
    values = experiment_config(config, data)
    write_json_atomic(output / "experiment.json", values)
    summary = run_experiment(parse_config(values, base=output), output / "experiment", echo=echo)
    near = scratch_near(summary)
    if near:
        echo("\nSSL at n against scratch at ~3.5n (mean Dice over seeds)")
        for n, m in near.items():
            scratch = summary["groups"][f"scratch-{m}"]
            for method in config.methods:
                ssl = summary["groups"][f"{method}-{n}"]
                echo(f"{method}-{n} {ssl['mean']:.3f}   scratch-{m} {scratch['mean']:.3f}   "
                     f"difference {ssl['mean'] - scratch['mean']:+.3f}")
    return summary
