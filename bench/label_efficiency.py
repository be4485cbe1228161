"""Label-efficiency benchmark on phantoms: Dice of fine-tuning from scratch and from each SSL method for a few label counts.

A fixed instance of ``nnunet-ssl experiment`` on phantoms: the phantoms go to ``OUTPUT/data``,
the experiment (nnU-Net's folders, arms, logs, ``results.json``, ``report.md``, plots) to
``OUTPUT/experiment``; the same command continues an interrupted run. See
``docs/label-efficiency.md`` and :mod:`nnunet_ssl.label_efficiency`.

Usage::

    python bench/label_efficiency.py -o le_run                        # counts 2 4, scratch 7 14, seeds 0 1
    python bench/label_efficiency.py -o le_run --seeds 0 1 2          # add a seed to the same run
    python bench/label_efficiency.py -o le_run50 --ssl my_ssl_settings.json --epochs 50
    python bench/label_efficiency.py -o le_all --ssl-trainer nnUNetTrainerMAE nnUNetTrainerModelsGenesis

(docs/label-efficiency.md has a smoke run with tiny sizes.)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nnunet_ssl.demo import DemoConfig  # noqa: E402
from nnunet_ssl.errors import UserError  # noqa: E402
from nnunet_ssl.label_efficiency import WHOLE_NETWORK_TRAINERS, BenchmarkConfig  # noqa: E402


def json_object(value: str, flag: str) -> dict:
    """``value`` (a JSON object, or the name of a JSON file holding one) as a dict."""
    path = Path(value)
    text = path.read_text(encoding="utf-8") if not value.lstrip().startswith("{") and path.is_file() else value
    try:
        given = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{flag} must be a JSON object or a JSON file: {e}") from None
    if not isinstance(given, dict):
        raise UserError(f"{flag} must be a JSON object of settings, got {type(given).__name__}")
    return given


def ssl_settings(value: str | None) -> dict:
    """The demo's SSL settings with the names of ``value`` (a JSON object, or a JSON file) replaced."""
    settings = dict(DemoConfig().ssl)
    if value is not None:
        settings.update(json_object(value, "--ssl"))
    return settings


def build_parser() -> argparse.ArgumentParser:
    d = BenchmarkConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="folder of the run (created; continued if it holds one)")
    p.add_argument("--counts", type=int, nargs="+", default=list(d.counts),
                   help="labelled training cases of the paired arms (scratch and every SSL method)")
    p.add_argument("--scratch-counts", type=int, nargs="*", default=list(d.scratch_counts),
                   help="extra scratch-only counts, to compare ssl-n with scratch at ~3.5n (none: give the flag alone)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds),
                   help="each seed draws the labelled subsets (nested over counts, shared by both arms) and "
                        "seeds the fine-tuning")
    p.add_argument("--epochs", type=int, default=d.epochs, help="fine-tuning epochs of every arm")
    p.add_argument("--iterations", type=int, default=d.iterations, help="fine-tuning iterations per epoch")
    p.add_argument("--val-iterations", type=int, default=d.val_iterations, help="validation iterations per epoch")
    p.add_argument("--final-validation", action="store_true",
                   help="let nnU-Net predict the validation cases after each fine-tuning (unused by the benchmark)")
    p.add_argument("--ssl", default=None, metavar="JSON",
                   help="SSL settings (JSON object or file) replacing those names of the demo's settings "
                        f"(default: the demo's, {json.dumps(DemoConfig().ssl)})")
    p.add_argument("--ssl-trainer", nargs="+", default=list(d.ssl_trainers), metavar="TRAINER",
                   help="SSL trainer classes for nnUNetv2_train -tr, one method each (named desd, mae, "
                        "modelsgenesis, ...), pretrained on the same phantoms and fine-tuned on the same subsets; "
                        f"{', '.join(WHOLE_NETWORK_TRAINERS)} are fine-tuned from their whole "
                        "checkpoint_final.pth, the others from their encoder through nnunet-ssl-transfer")
    p.add_argument("--pretext", default=None, metavar="JSON",
                   help="settings blocks of the SSL trainers other than nnUNetTrainerDeSD (JSON object or file "
                        "keyed by trainer, e.g. {\"nnUNetTrainerMAE\": {\"mask_ratio\": 0.6}}); names left out "
                        "take the trainer's defaults and the run length of --ssl")
    p.add_argument("--n-labelled", type=int, default=d.n_pool, help="labelled cases the subsets are drawn from")
    p.add_argument("--n-val", type=int, default=d.n_val, help="fixed validation cases of every fold")
    p.add_argument("--n-unlabelled", type=int, default=d.n_unlabelled, help="extra unlabelled SSL cases")
    p.add_argument("--n-test", type=int, default=d.n_test, help="held-out test cases")
    p.add_argument("--shape", type=int, nargs=3, default=list(d.shape), metavar=("Z", "Y", "X"),
                   help="phantom size in voxels")
    p.add_argument("--lesion-drop-hu", type=float, default=d.lesion_drop_hu, help="lesion contrast in HU")
    p.add_argument("--variation", action="store_true",
                   help="case-to-case acquisition variation of the phantoms: a soft-tissue offset (-6..6 HU), a "
                        "smooth field (up to 6 HU), the noise level (2..7 HU) and an in-plane rotation (-12..12 deg)")
    p.add_argument("--base-features", type=int, default=d.base_features, help="features of the first stage")
    p.add_argument("--data-seed", type=int, default=d.data_seed, help="seed of the phantoms")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="device of nnU-Net's commands (auto: cuda when available)")
    p.add_argument("--force", action="store_true",
                   help="start over: remove the benchmark's own entries of the output folder first")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = args.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        config = BenchmarkConfig(
            counts=args.counts, scratch_counts=args.scratch_counts, seeds=args.seeds, n_pool=args.n_labelled,
            n_val=args.n_val, n_unlabelled=args.n_unlabelled, n_test=args.n_test, shape=args.shape,
            lesion_drop_hu=args.lesion_drop_hu, variation=args.variation, base_features=args.base_features, epochs=args.epochs,
            iterations=args.iterations, val_iterations=args.val_iterations,
            final_validation=args.final_validation, ssl=ssl_settings(args.ssl),
            ssl_trainers=args.ssl_trainer, pretext={} if args.pretext is None else json_object(args.pretext, "--pretext"),
            data_seed=args.data_seed, device=device)
        from nnunet_ssl.label_efficiency import run_benchmark

        run_benchmark(args.output, config, force=args.force)
    except KeyboardInterrupt:
        print("Interrupted; run the same command again to continue.", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"label_efficiency: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
