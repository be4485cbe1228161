"""Per-epoch record of an SSL run and its ``progress.png``.

nnU-Net's ``LocalLogger`` only accepts its segmentation keys and plots pseudo
Dice; this subclass keeps the same interface (one value per key per epoch,
stored in checkpoints) with the SSL quantities instead.
"""
from __future__ import annotations

from os.path import join

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

SSL_KEYS = ("train_losses", "val_losses", "teacher_entropy", "kl_teacher_student", "rankme_embedding",
            "rankme_features", "probe_auc", "lrs", "weight_decays", "momentums", "teacher_temps",
            "epoch_start_timestamps", "epoch_end_timestamps")


class SSLLocalLogger(LocalLogger):
    """One list per SSL quantity, one value per epoch."""

    def __init__(self, verbose: bool = False):
        super().__init__(verbose)
        self.my_fantastic_logging = {k: [] for k in SSL_KEYS}

    def completed_epochs(self) -> int:
        return min(len(v) for v in self.my_fantastic_logging.values())

    def load_checkpoint(self, checkpoint: dict):
        checkpoint = dict(checkpoint)
        if "probe_auc" not in checkpoint and "train_losses" in checkpoint:  # written before the probe existed
            checkpoint["probe_auc"] = [float("nan")] * len(checkpoint["train_losses"])
        missing = [k for k in SSL_KEYS if k not in checkpoint]
        if missing:
            raise ValueError(f"checkpoint logging lacks SSL keys {missing}: not an SSL checkpoint")
        self.my_fantastic_logging = checkpoint

    def plot_progress_png(self, output_folder: str) -> None:
        n = self.completed_epochs()
        if n == 0:
            return
        log = {k: v[:n] for k, v in self.my_fantastic_logging.items()}
        x = list(range(n))
        fig, axes = plt.subplots(5, 1, figsize=(10, 20))
        ax = axes[0]
        ax.plot(x, log["train_losses"], "b-", label="SSL loss (train)")
        ax.plot(x, log["val_losses"], "r-", label="SSL loss (validation)")
        ax.set_ylabel("loss")
        ax.legend()
        ax = axes[1]
        ax.plot(x, log["teacher_entropy"], "g-", label="teacher entropy (nats)")
        ax.plot(x, log["kl_teacher_student"], "c-", label="KL(teacher || last student head)")
        ax.set_ylabel("nats")
        ax.legend()
        ax = axes[4]
        ax.plot(x, log["rankme_embedding"], "m-", label="RankMe, teacher embedding")
        ax.plot(x, log["rankme_features"], "k-", label="RankMe, teacher pooled encoder features")
        ax.set_ylabel("effective rank")
        ax.legend(loc="upper left")
        if any(v == v for v in log["probe_auc"]):  # not all NaN: ssl.probe_data is set
            ax2 = ax.twinx()
            ax2.plot(x, log["probe_auc"], "r-o", label="linear probe ROC AUC (lesion vs. brain)")
            ax2.set_ylabel("ROC AUC")
            ax2.legend(loc="upper right")
        ax = axes[2]
        ax.plot(x, log["lrs"], "b-", label="learning rate")
        ax.set_ylabel("learning rate")
        ax2 = ax.twinx()
        ax2.plot(x, log["momentums"], "m--", label="teacher momentum")
        ax2.set_ylabel("momentum")
        ax.legend(loc="upper left")
        ax2.legend(loc="upper right")
        ax = axes[3]
        ax.plot(x, [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])],
                "b-", label="epoch duration")
        ax.set_ylabel("time [s]")
        ax.legend()
        for ax in axes:
            ax.set_xlabel("epoch")
        fig.tight_layout()
        fig.savefig(join(output_folder, "progress.png"))
        plt.close(fig)
