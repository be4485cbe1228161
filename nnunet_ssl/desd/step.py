"""One DeSD optimisation step, shared by the trainer and the benchmark."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import autocast

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


def forward_views(network: DeSDNetwork, student: torch.nn.Module, view1: torch.Tensor,
                  view2: torch.Tensor, use_autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Student logits ``(H, 2, B, K)`` and teacher logits ``(2, B, K)`` for a batch of view pairs.

    Both views go through each network in one pass (instance norm is per sample,
    and the heads' batch norm sees both views, as in DINO).
    """
    b = view1.shape[0]
    x = torch.cat([view1, view2])
    with autocast(x.device.type, enabled=use_autocast):
        student_logits = student(x)
        with torch.no_grad():
            teacher_logits = network.teacher(x)
    k = student_logits.shape[-1]
    return student_logits.view(-1, 2, b, k), teacher_logits.view(2, b, k)


def train_step(network: DeSDNetwork, student: torch.nn.Module, optimizer: torch.optim.Optimizer,
               view1: torch.Tensor, view2: torch.Tensor, settings: DeSDSettings, schedule: StepSchedule,
               grad_scaler: Optional[torch.amp.GradScaler] = None) -> dict:
    """Forward, loss, backward, optimiser step, teacher EMA and centre update.

    Args:
        network: The DeSD model (unwrapped).
        student: ``network.student`` or its DDP wrapper.
        optimizer: Optimiser over the student's parameters; param groups carry a
            ``regularized`` flag saying whether weight decay applies.
        view1, view2: ``(B, C, *view_size)`` on the network's device.
        settings: DeSD settings.
        schedule: This iteration's scheduled values.
        grad_scaler: For mixed precision on CUDA (autocast is used when given).

    Returns:
        ``{"loss": float tensor, "teacher_entropy": float, "kl_teacher_student": float}``.
    """
    for group in optimizer.param_groups:
        group["lr"] = schedule.lr
        group["weight_decay"] = schedule.weight_decay if group.get("regularized", True) else 0.0
    optimizer.zero_grad(set_to_none=True)
    student_logits, teacher_logits = forward_views(network, student, view1, view2, grad_scaler is not None)
    per_head = cross_entropy_per_head(student_logits, teacher_logits, network.center, settings.student_temp,
                                      schedule.teacher_temp)
    loss = weighted_mean(per_head, settings.head_weights)
    if grad_scaler is not None:
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(optimizer)
    else:
        loss.backward()
    if settings.clip_grad > 0:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, settings.clip_grad)
    if schedule.freeze_last_layer:
        # DINO: keeping the prototypes fixed at first stabilises the start
        for head in network.student.heads:
            head.last_layer.weight.grad = None
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
