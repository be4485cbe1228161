"""One DeSD optimisation step, shared by the trainer and the benchmark.

Where the time and memory go (see ``docs/performance.md``): the heads hold most of the
parameters (the weight-normalised last layer alone has 16.8M per stage with K = 65536).
Outside DDP and mixed precision, the AdamW step of every head weight matrix is taken
during the backward pass, block by block of rows, from its factored gradient
(:class:`~nnunet_ssl.desd.heads.LowRankGrad`): those gradients are never materialised,
so they cost neither memory nor the page faults of fresh allocations. Every other
parameter (encoder, biases, batch norm) takes the ordinary optimiser step after the
backward pass. Gradients are clipped per parameter, as DINO does, in both paths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import autocast
from torch.nn.parallel import DistributedDataParallel

from nnunet_ssl.desd.heads import LowRankGrad
from nnunet_ssl.desd.loss import (cross_entropy_per_head, mean_entropy, teacher_probabilities, update_center,
                                  weighted_mean)
from nnunet_ssl.desd.model import DeSDNetwork, ema_update
from nnunet_ssl.desd.settings import DeSDSettings

# row blocks of the in-backward update on the CPU: small enough to stay in cache between
# computing a block's gradient and the AdamW kernel reading it
CPU_BLOCK_BYTES = 4 * 2**20


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
    and the heads' batch norm sees both views, as in DINO). The teacher runs first, so
    that its (gradient-free) activations are gone before the student's are stored.
    """
    b = view1.shape[0]
    x = torch.cat([view1, view2])
    with autocast(x.device.type, enabled=use_autocast):
        with torch.no_grad():
            teacher_logits = network.teacher(x)
        student_logits = student(x)
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
            ``regularized`` flag saying whether weight decay applies. With AdamW (see
            :func:`make_optimizer`), no DDP and no ``grad_scaler``, the heads' weight
            matrices are updated inside the backward pass (the same AdamW step, with its
            state in ``optimizer``).
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
    heads = network.student.heads
    hooked = [m for m in heads.modules() if hasattr(m, "weight_update")]
    in_backward = (settings.head_update_in_backward and grad_scaler is None
                   and not isinstance(student, DistributedDataParallel)
                   and supports_in_backward_update(optimizer, [_hooked_weight(m) for m in hooked]))
    if in_backward:
        frozen = [h.last_layer.weight for h in heads] if schedule.freeze_last_layer else []
        update = InBackwardAdamW(optimizer, settings.clip_grad, frozen)
        for m in hooked:
            m.weight_update = update
    try:
        student_logits, teacher_logits = forward_views(network, student, view1, view2, grad_scaler is not None)
        per_head = cross_entropy_per_head(student_logits, teacher_logits, network.center, settings.student_temp,
                                          schedule.teacher_temp)
        loss = weighted_mean(per_head, settings.head_weights)
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            grad_scaler.unscale_(optimizer)
        else:
            loss.backward()
    finally:
        for m in hooked:
            m.weight_update = None
    if schedule.freeze_last_layer:
        # DINO: keeping the prototypes fixed at first stabilises the start
        for head in heads:
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
    """AdamW over :func:`parameter_groups`, with PyTorch's fused kernel where the device has one.

    Learning rate and weight decay are set by :func:`train_step` at every step.

    Example:
        >>> opt = make_optimizer(torch.nn.Linear(3, 2))
        >>> [len(g["params"]) for g in opt.param_groups]
        [1, 1]
    """
    groups = parameter_groups(module)
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(_has_fused_adamw(p) for p in params)
    return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, fused=fused or None)


def clip_per_parameter_(params: Sequence[torch.Tensor], max_norm: float) -> None:
    """DINO's ``clip_gradients``: scale each gradient whose norm exceeds ``max_norm`` down to it.

    Example:
        >>> p = torch.zeros(2, requires_grad=True); p.grad = torch.tensor([3.0, 4.0])
        >>> clip_per_parameter_([p], 1.0); [round(v, 4) for v in p.grad.tolist()]
        [0.6, 0.8]
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or max_norm <= 0:
        return
    coefs = (max_norm / (torch.stack(torch._foreach_norm(grads)).float() + 1e-6)).tolist()  # one sync
    clipped = [(g, c) for g, c in zip(grads, coefs) if c < 1.0]
    if clipped:
        torch._foreach_mul_([g for g, _ in clipped], [c for _, c in clipped])


def supports_in_backward_update(optimizer: torch.optim.Optimizer, weights: Sequence[torch.Tensor]) -> bool:
    """Whether :class:`InBackwardAdamW` can stand in for ``optimizer.step()`` on ``weights``.

    It can for plain AdamW (no AMSGrad, ``maximize``, ``capturable`` or ``differentiable``,
    float learning rate) on devices with PyTorch's fused AdamW kernel.
    """
    if not isinstance(optimizer, torch.optim.Adam) or not hasattr(torch, "_fused_adamw_"):
        return False
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for w in weights:
        g = groups.get(id(w))
        if g is None or not w.requires_grad or not _has_fused_adamw(w):
            return False
        decoupled = isinstance(optimizer, torch.optim.AdamW) or g.get("decoupled_weight_decay", False)
        if (not decoupled or g.get("amsgrad") or g.get("maximize") or g.get("capturable")
                or g.get("differentiable") or isinstance(g.get("lr"), torch.Tensor)):
            return False
    return True


class InBackwardAdamW:
    """The AdamW step of head weight matrices, taken inside the backward pass.

    Called by a layer's backward with its weight and factored gradient
    (:class:`~nnunet_ssl.desd.heads.LowRankGrad`). Clips the gradient by its own norm
    (DINO's per-parameter clipping; the norm comes from ``(N, K)`` quantities), then runs
    PyTorch's fused AdamW kernel block by block of rows, each block's gradient computed
    just before, into one reused buffer, from the weight rows it is about to update. The
    result is that of ``optimizer.step()`` on the dense gradient; the state (``step``,
    ``exp_avg``, ``exp_avg_sq``) lives in ``optimizer.state`` as AdamW's own, so
    checkpoints and resuming are unchanged. Hyperparameters come from the weight's param
    group. Weights in ``frozen`` (DINO's ``freeze_last_layer``) are left untouched, as
    AdamW leaves a parameter without gradient.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, clip_grad: float,
                 frozen: Sequence[torch.Tensor] = (), block_bytes: Optional[int] = None):
        self.optimizer = optimizer
        self.clip_grad = clip_grad
        self.block_bytes = block_bytes or CPU_BLOCK_BYTES
        self._frozen = {id(w) for w in frozen}
        self._groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}

    @torch.no_grad()
    def __call__(self, weight: torch.Tensor, grad: LowRankGrad) -> None:
        if id(weight) in self._frozen:
            return
        group = self._groups[id(weight)]
        state = self.optimizer.state[weight]
        if not state:  # as AdamW's _init_group with fused=True
            state["step"] = torch.zeros((), dtype=torch.float32, device=weight.device)
            state["exp_avg"] = torch.zeros_like(weight, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(weight, memory_format=torch.preserve_format)
        elif state["step"].device != weight.device:  # e.g. written by the non-fused AdamW on CUDA
            state["step"] = state["step"].to(weight.device)
        scale = 1.0
        if self.clip_grad > 0:
            scale = min(1.0, self.clip_grad / (float(grad.squared_norm().sqrt()) + 1e-6))
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        step.add_(1)
        n_rows, width = weight.shape
        rows = block_rows(weight, self.block_bytes)
        buffer = torch.empty(rows, width, dtype=weight.dtype, device=weight.device)
        w = weight.detach()
        beta1, beta2 = group["betas"]
        for start in range(0, n_rows, rows):
            stop = min(start + rows, n_rows)
            block = grad.rows(start, stop, out=buffer[:stop - start])
            if scale < 1.0:
                block.mul_(scale)
            torch._fused_adamw_([w[start:stop]], [block], [exp_avg[start:stop]], [exp_avg_sq[start:stop]], [],
                                [step], lr=group["lr"], beta1=beta1, beta2=beta2,
                                weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                                maximize=False)


def block_rows(weight: torch.Tensor, block_bytes: int = CPU_BLOCK_BYTES) -> int:
    """Rows per block of :class:`InBackwardAdamW`'s update of ``weight``: all of them on a GPU,
    about ``block_bytes`` worth on the CPU."""
    n_rows, width = weight.shape
    if weight.device.type != "cpu":
        return n_rows
    return max(1, min(n_rows, block_bytes // (width * weight.element_size())))


def _hooked_weight(module: torch.nn.Module) -> torch.Tensor:
    """The weight whose gradient goes to ``module.weight_update``: a head's last layer, or a layer's own."""
    last = getattr(module, "last_layer", None)
    return last.weight if last is not None else module.weight


def _has_fused_adamw(p: torch.Tensor) -> bool:
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return p.is_floating_point() and p.device.type in _get_fused_kernels_supported_devices()
