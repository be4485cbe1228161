"""The focal Tversky loss (Abraham and Khan 2019) for nnU-Net's outputs, and its plans block.

For each foreground class (or region) ``c`` the soft counts are taken from the
probabilities ``p`` (softmax over the classes, or a sigmoid per region) and the
one-hot reference ``g``, summed over the voxels (and over the batch with
nnU-Net's ``batch_dice``)::

    TP = sum p g        FN = sum (1 - p) g        FP = sum p (1 - g)
    TI = (TP + s) / (TP + alpha FN + beta FP + s)
    loss = mean over classes (and samples) of (1 - TI) ** gamma

``s`` is nnU-Net's Dice smoothing (1e-5). With ``alpha = beta = 0.5`` the index
is the soft Dice coefficient (with smoothing ``2 s``), so ``gamma = 1`` gives
nnU-Net's soft Dice loss plus one; ``gamma = 1`` alone gives the Tversky loss.
``alpha > beta`` weighs a missed lesion voxel more than a false alarm.

The paper writes the exponent as ``1 / gamma`` with its ``gamma = 4/3`` and uses
``alpha = 0.7``, ``beta = 0.3``; its published code raises ``1 - TI`` to 0.75.
Here ``gamma`` is the exponent itself, so the defaults ``alpha = 0.7``,
``beta = 0.3``, ``gamma = 0.75`` are the paper's. An exponent below 1 makes the
gradient grow as ``TI`` approaches 1, keeping the loss working on cases that
are already mostly right.

Like nnU-Net's Dice the background class is left out with softmax outputs and
every region counts with sigmoid outputs; voxels of the ignore label are left
out of all counts.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import nn

from nnunet_ssl.errors import UserError

BLOCK_KEY = "focal_tversky"
# (1 - TI) is floored here before the power: with gamma < 1 the derivative of u ** gamma is
# infinite at u = 0 (a saturated softmax reaches it exactly in float32; inf * 0 gives NaN
# gradients) and huge just above; the floor bounds it (gamma * 1e-6 ** (gamma - 1), 24 at 0.75)
_FLOOR = 1e-6


@dataclass(frozen=True)
class FocalTverskySettings:
    """The ``focal_tversky`` block of the plans configuration; defaults from Abraham and Khan (2019).

    Example plans fragment::

        "3d_fullres": {..., "focal_tversky": {"alpha": 0.7, "beta": 0.3, "gamma": 0.75}}
    """

    alpha: float = 0.7   # weight of the false negatives
    beta: float = 0.3    # weight of the false positives
    gamma: float = 0.75  # exponent of (1 - TI); 1 is the plain Tversky loss

    def __post_init__(self):
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"{BLOCK_KEY} setting '{name}' must be a number, got {json.dumps(value)}")
        if self.alpha < 0 or self.beta < 0:
            raise UserError(f"{BLOCK_KEY} settings 'alpha' and 'beta' must be >= 0, got alpha={self.alpha}, "
                            f"beta={self.beta}")
        if self.alpha + self.beta <= 0:
            raise UserError(f"{BLOCK_KEY} needs alpha + beta > 0 (e.g. alpha 0.7, beta 0.3); with both 0 "
                            "every prediction scores 1")
        if self.gamma <= 0:
            raise UserError(f"{BLOCK_KEY} setting 'gamma' must be > 0 (e.g. 0.75), got {self.gamma}")

    @classmethod
    def from_dict(cls, values: Optional[Mapping[str, Any]] = None) -> "FocalTverskySettings":
        """Settings from a (possibly partial) mapping; unknown names and non-numbers are refused by name.

        Example:
            >>> FocalTverskySettings.from_dict({"gamma": 1}).alpha
            0.7
        """
        if values is not None and not isinstance(values, Mapping):
            raise UserError(f"the {BLOCK_KEY} block must be an object such as "
                            f'{{"alpha": 0.7, "beta": 0.3, "gamma": 0.75}}, got {json.dumps(values)}')
        values = dict(values or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"unknown {BLOCK_KEY} setting(s) {unknown}; known: {known}")
        return cls(**values)

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any]) -> "FocalTverskySettings":
        """Read the ``focal_tversky`` block of an nnU-Net plans configuration (a dict)."""
        return cls.from_dict(configuration.get(BLOCK_KEY))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class FocalTverskyLoss(nn.Module):
    """Focal Tversky loss of raw network outputs (logits) against nnU-Net's targets.

    Args:
        alpha: Weight of the false negatives.
        beta: Weight of the false positives.
        gamma: Exponent of ``1 - TI``.
        regions: ``False``: softmax over the channels, the target is a label map
            ``(b, 1, ...)`` and the background channel 0 is left out. ``True``
            (nnU-Net's region-based training): a sigmoid per channel, the target
            is one-hot ``(b, c, ...)`` and every channel counts.
        ignore_label: nnU-Net's ignore label, or ``None``. Label maps: voxels with
            this value are left out. Regions: the target carries one more channel,
            the last, which is 1 where voxels are ignored (nnU-Net's convention).
        batch_dice: Sum the counts over the batch too (one index per class), as
            nnU-Net's ``batch_dice`` does for its Dice.
        smooth: Added to the numerator and the denominator of the index.
        ddp: With ``batch_dice``, gather the counts of all processes (nnU-Net's
            ``AllGatherGrad``) so that every process sees the whole batch.

    Example:
        >>> loss = FocalTverskyLoss()
        >>> logits = torch.zeros(1, 2, 4, 4)  # p = 0.5 everywhere
        >>> target = torch.zeros(1, 1, 4, 4); target[..., :2, :2] = 1
        >>> round(float(loss(logits, target)), 4)  # TI = 2 / (2 + 0.7 * 2 + 0.3 * 6)
        0.6948
    """

    def __init__(self, alpha: float = 0.7, beta: float = 0.3, gamma: float = 0.75, regions: bool = False,
                 ignore_label: Optional[int] = None, batch_dice: bool = False, smooth: float = 1e-5,
                 ddp: bool = False):
        super().__init__()
        FocalTverskySettings(alpha, beta, gamma)  # same checks as the plans block
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.regions = regions
        self.ignore_label = ignore_label
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.ddp = ddp

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fn, fp = self.soft_counts(net_output, target)
        ti = (tp + self.smooth) / (tp + self.alpha * fn + self.beta * fp + self.smooth).clamp_min(1e-8)
        return ((1 - ti).clamp_min(_FLOOR) ** self.gamma).mean()

    def soft_counts(self, net_output: torch.Tensor, target: torch.Tensor):
        """``(TP, FN, FP)`` per sample and class ``(b, c)``, or per class ``(c,)`` with ``batch_dice``.

        Memory-light like nnU-Net's ``MemoryEfficientSoftDiceLoss``: only ``sum p g``,
        ``sum p`` and ``sum g`` are formed; ``FN = sum g - TP`` and ``FP = sum p - TP``.
        """
        axes = tuple(range(2, net_output.ndim))
        dtype = torch.promote_types(net_output.dtype, torch.float32)  # sums in float32 at least (AMP)
        with torch.no_grad():
            mask = None
            if self.regions:
                if self.ignore_label is not None:
                    mask = (target[:, -1:] == 0).to(dtype)
                    target = target[:, :-1]
                onehot = target.to(dtype)
            else:
                if target.ndim != net_output.ndim:
                    target = target.view(target.shape[0], 1, *target.shape[1:])
                if self.ignore_label is not None:
                    mask = (target != self.ignore_label).to(dtype)
                    target = torch.where(target == self.ignore_label, torch.zeros_like(target), target)
                onehot = torch.zeros(net_output.shape, device=net_output.device, dtype=dtype)
                onehot.scatter_(1, target.long(), 1)
                onehot = onehot[:, 1:]
            if mask is not None:
                onehot = onehot * mask
            sum_gt = onehot.sum(axes, dtype=dtype)
        if self.regions:
            probs = torch.sigmoid(net_output)
        else:
            probs = torch.softmax(net_output, 1)[:, 1:]
        if mask is not None:
            probs = probs * mask
        tp = (probs * onehot).sum(axes, dtype=dtype)
        sum_pred = probs.sum(axes, dtype=dtype)
        if self.batch_dice:
            if self.ddp:
                from nnunetv2.utilities.ddp_allgather import AllGatherGrad

                tp = AllGatherGrad.apply(tp).sum(0, dtype=dtype)
                sum_pred = AllGatherGrad.apply(sum_pred).sum(0, dtype=dtype)
                sum_gt = AllGatherGrad.apply(sum_gt).sum(0, dtype=dtype)
            tp, sum_pred, sum_gt = tp.sum(0), sum_pred.sum(0), sum_gt.sum(0)
        return tp, sum_gt - tp, sum_pred - tp
