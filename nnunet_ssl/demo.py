"""The demo: the whole SSL workflow on synthetic stroke phantoms, on a CPU, in minutes.

Steps (each one a real command or library call a user would make):

1. write an unlabelled SSL dataset (brain masks as labels) and a small labelled
   target dataset (lesion labels, with held-out test cases) of phantoms;
2. plan and preprocess the SSL dataset with a small network (``nnunet-ssl plan``);
3. plan the target dataset with the SSL dataset's encoder topology and intensity
   statistics, and preprocess it;
4. pretrain with ``nnUNetv2_train SSL 3d_fullres all -tr nnUNetTrainerDeSD``;
5. ``nnunet-ssl-transfer`` the teacher encoder into the target network;
6. fine-tune with stock nnU-Net from the pretrained weights, and the same from scratch;
7. predict the test cases with ``nnUNetv2_predict`` for both;
8. evaluate both against the test labels and print Dice.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from nnunet_ssl.errors import UserError

SSL_ID, SSL_NAME = 990, "DemoSSL"
TARGET_ID, TARGET_NAME = 991, "DemoStroke"
FINETUNE_TRAINER = "nnUNetTrainer_Demo"
TRAINERS_DIR = Path(__file__).resolve().parents[1] / "trainers"
RUNS = ("pretrained", "scratch")
LOG_NAMES = ("plan_ssl", "plan_target", "pretrain", "transfer", *(f"finetune_{r}" for r in RUNS),
             *(f"predict_{r}" for r in RUNS))
_DATASETS = (f"Dataset{SSL_ID}_{SSL_NAME}", f"Dataset{TARGET_ID}_{TARGET_NAME}")
# what the demo writes into its output folder (relative paths); --force removes exactly these, so that
# a user's own datasets, predictions or notes that merely sit in the same nnU-Net folders stay
DEMO_ENTRIES = (tuple(f"{root}/{d}" for root in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
                      for d in _DATASETS)
                + tuple(f"{folder}/{r}" for folder in ("predictions", "evaluation") for r in RUNS)
                + tuple(f"logs/{name}.log" for name in LOG_NAMES)
                + ("pretrained_encoder.pth", "demo_summary.json"))


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; the defaults run in well under 15 minutes on two CPU cores."""

    n_labelled: int = 6
    n_unlabelled: int = 18
    n_test: int = 6
    shape: tuple[int, int, int] = (32, 48, 48)
    # clearer than a typical acute lesion (a few HU), so that minutes of CPU training can find it
    lesion_drop_hu: float = 20.0
    base_features: int = 8
    gpu_memory_gb: float = 0.5
    # A 600-iteration run of batch 4, not the paper's ~10^6 of batch 64: the adaptive recipe
    # (nnunet_ssl.desd.recipe) sets the teacher momentum, learning rate, K and temperatures for it.
    # The heads are narrower than the paper's (512/128 for 2048/256) to keep the CPU run short.
    ssl: dict = field(default_factory=lambda: {
        "num_epochs": 15, "num_iterations_per_epoch": 40, "num_val_iterations_per_epoch": 4,
        "batch_size": 4, "view_size": [24, 32, 32], "slab_depth": 28, "hidden_dim": 512,
        "bottleneck_dim": 128, "monitor_warmup_epochs": 3})
    seed: int = 0


def check_output_folder(output: Path, force: bool) -> None:
    """Refuse a non-empty output folder unless ``force``; with ``force`` remove only demo outputs."""
    if output.exists() and not output.is_dir():
        raise UserError(f"{output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()):
        if not force:
            raise UserError(f"output folder {output} is not empty; choose another or pass --force "
                            f"(which removes only what the demo writes: its datasets {SSL_ID} and {TARGET_ID}, "
                            "its predictions, evaluations, logs, pretrained_encoder.pth and demo_summary.json)")
        remove_entries(output, DEMO_ENTRIES)
    output.mkdir(parents=True, exist_ok=True)


def remove_entries(output: Path, entries) -> None:
    """Remove the named entries of ``output`` (folders, files, links; a link is removed, not followed)."""
    for name in entries:
        path = output / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def demo_environment(output: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(output / "nnUNet_raw"),
        "nnUNet_preprocessed": str(output / "nnUNet_preprocessed"),
        "nnUNet_results": str(output / "nnUNet_results"),
        "nnUNet_extTrainer": os.pathsep.join(p for p in (str(TRAINERS_DIR), env.get("nnUNet_extTrainer")) if p),
        "nnUNet_compile": "false",
    })
    env.setdefault("nnUNet_n_proc_DA", "1")
    env.setdefault("nnUNet_def_n_proc", "1")
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


class Runner:
    """Runs the steps, logs each command's output to ``logs/`` and prints progress."""

    def __init__(self, output: Path, env: dict, n_steps: int, echo: Callable[[str], None] = print):
        self.output, self.env, self.n_steps, self.echo = output, env, n_steps, echo
        self.step = 0
        self.t0 = time.time()
        (output / "logs").mkdir(exist_ok=True)

    def announce(self, title: str) -> None:
        self.step += 1
        self.echo(f"[{self.step}/{self.n_steps}] {title}  (elapsed {time.time() - self.t0:.0f} s)")

    def command(self, args: list[str], log_name: str, progress_marker: Optional[str] = None) -> None:
        """Run a command; echo lines containing ``progress_marker``; fail with the log's tail."""
        log_path = self.output / "logs" / f"{log_name}.log"
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(" ".join(args) + "\n")
            proc = subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, encoding="utf-8", errors="replace", bufsize=1)
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if progress_marker and progress_marker in line:
                    self.echo("      " + line.rstrip().split(": ", 1)[-1])
            code = proc.wait()
        if code != 0:
            tail = "".join(open(log_path, encoding="utf-8").readlines()[-25:])
            raise UserError(f"step {self.step} failed: {' '.join(args)} exited {code}; log {log_path}:\n{tail}")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run_demo(output: Path, force: bool = False, config: DemoConfig = DemoConfig(),
             echo: Callable[[str], None] = print) -> dict:
    """Run the whole demo; return (and write to ``demo_summary.json``) the Dice of both runs."""
    from nnunet_ssl.phantom import write_phantom_dataset

    output = Path(output).resolve()
    try:
        check_output_folder(output, force)
        env = demo_environment(output)
        run = Runner(output, env, 8, echo)
    except OSError as e:
        raise UserError(f"cannot write the demo's output folder {output}: {e.strerror or e}; choose a folder "
                        "you may write to with -o") from None
    c = config

    run.announce(f"writing phantoms: {c.n_labelled + c.n_unlabelled} for SSL, {c.n_labelled} labelled "
                 f"+ {c.n_test} test for segmentation")
    raw = Path(env["nnUNet_raw"])
    # the SSL dataset holds the labelled training images too (unlabelled use), never the test images
    write_phantom_dataset(raw, SSL_ID, SSL_NAME, n_train=c.n_labelled + c.n_unlabelled, shape=c.shape,
                          label="brain", seed=c.seed, lesion_drop_hu=c.lesion_drop_hu)
    write_phantom_dataset(raw, TARGET_ID, TARGET_NAME, n_train=c.n_labelled, n_test=c.n_test, shape=c.shape,
                          label="lesion", seed=c.seed, first_test_case=10_000, lesion_drop_hu=c.lesion_drop_hu)

    run.announce("planning and preprocessing the SSL dataset (nnunet-ssl plan)")
    ssl_args = [f"{k}={json.dumps(v)}" for k, v in c.ssl.items()]
    run.command([_bin("nnunet-ssl"), "plan", "-d", str(SSL_ID), "--base-features", str(c.base_features),
                 "--gpu-memory-gb", str(c.gpu_memory_gb), "-np", "1", "--ssl", *ssl_args], "plan_ssl")

    run.announce("planning the target dataset with the SSL encoder and intensity statistics")
    run.command([_bin("nnunet-ssl"), "plan-target", "-d", str(TARGET_ID), "--from", str(SSL_ID), "-np", "1"],
                "plan_target")

    run.announce("SSL pretraining: nnUNetv2_train ... -tr nnUNetTrainerDeSD")
    run.command([_bin("nnUNetv2_train"), str(SSL_ID), "3d_fullres", "all", "-tr", "nnUNetTrainerDeSD",
                 "-device", "cpu"], "pretrain", progress_marker="train_loss")
    ssl_ckpt = (output / "nnUNet_results" / f"Dataset{SSL_ID}_{SSL_NAME}" /
                "nnUNetTrainerDeSD__nnUNetPlans__3d_fullres" / "fold_all" / "checkpoint_final.pth")

    run.announce("transferring the teacher encoder (nnunet-ssl-transfer)")
    weights = output / "pretrained_encoder.pth"
    run.command([_bin("nnunet-ssl-transfer"), str(ssl_ckpt), "-d", str(TARGET_ID), "-p", _target_plans(),
                 "-o", str(weights)], "transfer")

    results = {}
    target_folder = (output / "nnUNet_results" / f"Dataset{TARGET_ID}_{TARGET_NAME}" /
                     f"{FINETUNE_TRAINER}__{_target_plans()}__3d_fullres")
    for i, (name, extra) in enumerate(zip(RUNS, (["-pretrained_weights", str(weights)], []))):
        if i == 0:
            run.announce("fine-tuning with stock nnU-Net: from the SSL encoder, then from scratch")
        run.command([_bin("nnUNetv2_train"), str(TARGET_ID), "3d_fullres", "0", "-tr", FINETUNE_TRAINER,
                     "-p", _target_plans(), "-device", "cpu", *extra], f"finetune_{name}",
                    progress_marker="Pseudo dice")
        # both runs write to nnU-Net's one output folder for this trainer and plans: keep each apart
        results[name] = target_folder.parent / f"{target_folder.name}__{name}"
        shutil.move(str(target_folder), str(results[name]))

    run.announce("predicting the test cases (nnUNetv2_predict_from_modelfolder) and evaluating")
    summary = {"config": asdict(c), "dice": {}}
    images = raw / f"Dataset{TARGET_ID}_{TARGET_NAME}" / "imagesTs"
    labels = raw / f"Dataset{TARGET_ID}_{TARGET_NAME}" / "labelsTs"
    for name, model_folder in results.items():
        pred = output / "predictions" / name
        run.command([_bin("nnUNetv2_predict_from_modelfolder"), "-i", str(images), "-o", str(pred),
                     "-m", str(model_folder), "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"],
                    f"predict_{name}")
        summary["dice"][name] = _mean_dice(pred, labels, output / "evaluation" / name)
    echo("")
    echo(f"Test Dice (mean over {c.n_test} cases, lesion label):")
    for name, value in summary["dice"].items():
        echo(f"  {name:>10}: {value:.3f}")
    echo(f"Everything is under {output}; total {time.time() - run.t0:.0f} s.")
    (output / "demo_summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def _target_plans() -> str:
    from nnunet_ssl.target_plans import default_plans_name

    return default_plans_name("nnUNetPlans", f"Dataset{SSL_ID:03d}_{SSL_NAME}")


def _mean_dice(pred: Path, labels: Path, out: Path) -> float:
    from nnunet_ssl.evaluation.folder import Settings, evaluate_folder, write_outputs

    rows, summary = evaluate_folder(pred, labels, Settings(labels=(1,)), progress=False)
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out, rows, summary)
    return float(summary["labels"]["1"]["metrics"]["dice"]["mean"])
