"""One DeSD optimisation step, shared by the trainer and the benchmark.

The body of DINO's ``train_one_epoch`` for one batch: forward under autocast, loss,
backward (through a ``GradScaler`` when given), DINO's per-parameter gradient clipping,
``freeze_last_layer``, AdamW, teacher EMA and centre update. One code path on every device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from nnunet_ssl.desd.loss import (cross_entropy_per_head, mean_entropy, teacher_probabilities, update_center,
                                  weighted_mean)
from nnunet_ssl.desd.model import DeSDNetwork, ema_update
from nnunet_ssl.desd.settings import DeSDSettings


@dataclass(frozen=True)
class StepSchedule:
    """The scheduled values of one iteration."""

    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    freeze_last_layer: bool


def forward_views(network: DeSDNetwork, student: torch.nn.Module, view1: torch.Tensor, view2: torch.Tensor,
                  autocast_dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Student logits ``(H, 2, B, K)`` and teacher logits ``(2, B, K)`` for a batch of view pairs.

    Both views go through each network in one pass (instance norm is per sample,
    and the heads' batch norm sees both views, as in DINO). The teacher runs first, so
    that its (gradient-free) activations are gone before the student's are stored.
    ``autocast_dtype`` (None: no autocast) is the dtype of ``torch.autocast``.
    """
    b = view1.shape[0]
    x = torch.cat([view1, view2])
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        with torch.no_grad():
            teacher_logits = network.teacher(x)
        student_logits = student(x)
    k = student_logits.shape[-1]
    return student_logits.view(-1, 2, b, k), teacher_logits.view(2, b, k)


def train_step(network: DeSDNetwork, student: torch.nn.Module, optimizer: torch.optim.Optimizer,
               view1: torch.Tensor, view2: torch.Tensor, settings: DeSDSettings, schedule: StepSchedule,
               autocast_dtype: Optional[torch.dtype] = None,
               grad_scaler: Optional[torch.amp.GradScaler] = None) -> dict:
    """Forward, loss, backward, optimiser step, teacher EMA and centre update.

    Args:
        network: The DeSD model (unwrapped).
        student: ``network.student`` or its DDP wrapper.
        optimizer: Optimiser over the student's parameters; param groups carry a
            ``regularized`` flag saying whether weight decay applies (see :func:`make_optimizer`).
        view1, view2: ``(B, C, *view_size)`` on the network's device.
        settings: DeSD settings.
        schedule: This iteration's scheduled values.
        autocast_dtype: Mixed precision: the autocast dtype (float16 on CUDA, as nnU-Net;
            bfloat16 on the CPU), None for full precision.
        grad_scaler: Loss scaling for float16 (nnU-Net's ``GradScaler`` on CUDA); gradients
            are unscaled before clipping, and the scaler skips steps with non-finite gradients.

    Returns:
        ``{"loss": float tensor, "teacher_entropy": float, "kl_teacher_student": float}``.
    """
    for group in optimizer.param_groups:
        group["lr"] = schedule.lr
        group["weight_decay"] = schedule.weight_decay if group.get("regularized", True) else 0.0
    optimizer.zero_grad(set_to_none=True)
    student_logits, teacher_logits = forward_views(network, student, view1, view2, autocast_dtype)
    per_head = cross_entropy_per_head(student_logits, teacher_logits, network.center, settings.student_temp,
                                      schedule.teacher_temp)
    loss = weighted_mean(per_head, settings.head_weights)
    if grad_scaler is not None:
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(optimizer)  # clipping sees the true gradients
    else:
        loss.backward()
    if schedule.freeze_last_layer:
        # DINO: keeping the prototypes fixed at first stabilises the start
        for head in network.student.heads:
            head.last_layer.weight.grad = None
    if settings.clip_grad > 0:
        clip_per_parameter_([p for g in optimizer.param_groups for p in g["params"]], settings.clip_grad)
    if grad_scaler is not None:
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        optimizer.step()
    ema_update(*network.teacher_pairs(), schedule.momentum)
    entropy = mean_entropy(teacher_probabilities(teacher_logits, network.center, schedule.teacher_temp))
    update_center(network.center, teacher_logits, settings.center_momentum)
    # KL(teacher || last-stage student head) = cross-entropy - teacher entropy (every view is a teacher
    # view exactly as often as the others, so the mean entropy is the right one to subtract)
    kl = float(per_head[-1].detach()) - entropy
    return {"loss": loss.detach(), "teacher_entropy": entropy, "kl_teacher_student": kl}


def parameter_groups(module: torch.nn.Module) -> list[dict]:
    """AdamW groups as DINO: weight decay on weights, none on biases and normalisation parameters."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "regularized": True}, {"params": no_decay, "regularized": False}]


def make_optimizer(module: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`: fused where PyTorch has the kernel, else foreach.

    Learning rate and weight decay are set by :func:`train_step` at every step. PyTorch
    refuses ``fused=True`` for parameters on a device without the kernel (the CPU before
    PyTorch 2.4), which selects the foreach implementation instead.

    Example:
        >>> opt = make_optimizer(torch.nn.Linear(3, 2))
        >>> [len(g["params"]) for g in opt.param_groups]
        [1, 1]
    """
    groups = parameter_groups(module)
    try:
        return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, foreach=True)


def clip_per_parameter_(params: Sequence[torch.Tensor], max_norm: float) -> None:
    """DINO's ``clip_gradients``: scale each gradient whose norm exceeds ``max_norm`` down to it.

    Every gradient is multiplied by ``min(1, max_norm / (norm + 1e-6))``, computed on the
    device (nothing is read back to the host).

    Example:
        >>> p = torch.zeros(2, requires_grad=True); p.grad = torch.tensor([3.0, 4.0])
        >>> clip_per_parameter_([p], 1.0); [round(v, 4) for v in p.grad.tolist()]
        [0.6, 0.8]
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or max_norm <= 0:
        return
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    coefs = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g, c in zip(grads, coefs):
        g.mul_(c.to(g.dtype))
