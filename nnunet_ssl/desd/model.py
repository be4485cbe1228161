"""Student and EMA teacher built around an nnU-Net encoder.

The student is the encoder with one projection head per stage (deep
self-distillation); the teacher is a copy of the encoder with one head on the
last stage, updated as an exponential moving average of the student.

State-dict layout (the transfer relies on it)::

    student.encoder.*   student.heads.<stage>.*   teacher.encoder.*   teacher.head.*   center
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ssl.desd.heads import ProjectionHead, global_average_pool
from nnunet_ssl.ssl.contrastive import momentum_update


class Student(nn.Module):
    """Encoder + one head per stage; ``forward`` gives ``(stages, N, K)`` logits."""

    def __init__(self, encoder: nn.Module, heads: Sequence[nn.Module]):
        super().__init__()
        self.encoder = encoder
        self.encoder.return_skips = True
        self.heads = nn.ModuleList(heads)
        self._compiled_pool = None

    def compile_encoder(self, **options) -> None:
        """``torch.compile`` the encoder with the pooling of its stages, as one graph.

        What is compiled is a function, not a wrapper module: the module tree and the
        state-dict keys stay as they are. The pooling sits inside the graph, so the
        compiled backward receives ``(N, C)`` gradients instead of full-size broadcast
        ones (and :meth:`pooled_stages` needs no forward hooks, which the compiler would
        guard on).
        """
        self._compiled_pool = torch.compile(self._pool_after_forward, **options)

    def _pool_after_forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [global_average_pool(f) for f in self.encoder(x)]

    @property
    def shares_last_layer(self) -> bool:
        """Whether every head uses one and the same last layer (``shared_last_layer``)."""
        return len(self.heads) > 1 and all(h.last_layer is self.heads[0].last_layer for h in self.heads)

    def pooled_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's stage outputs, each global-average-pooled as soon as its stage produced it.

        Pooling inside the encoder's forward (a forward hook per stage) puts the pooling's
        backward after the next stage's in autograd's order, so the next stage's dense
        gradient for a feature map arrives first and the pooling's broadcast gradient is
        added to it in place, instead of both being summed into a new full-size tensor.
        Encoders whose returned stages are not the outputs of ``encoder.stages`` are pooled
        afterwards. A compiled encoder (:meth:`compile_encoder`) pools inside its graph.
        """
        if self._compiled_pool is not None:
            return self._checked(self._compiled_pool(x))
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        handles = [s.register_forward_hook(lambda m, i, out: seen.append((out, global_average_pool(out))))
                   for s in getattr(self.encoder, "stages", [])]
        try:
            stages = self.encoder(x)
        finally:
            for handle in handles:
                handle.remove()
        self._checked(stages)
        if len(seen) == len(stages) and all(out is f for (out, _), f in zip(seen, stages)):
            return [pooled for _, pooled in seen]
        return [global_average_pool(f) for f in stages]

    def _checked(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(stages) != len(self.heads):
            raise RuntimeError(f"encoder returned {len(stages)} stages for {len(self.heads)} heads")
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled_stages(x)
        z = [F.normalize(h.embed(p), dim=-1) for h, p in zip(self.heads, pooled)]
        if self.shares_last_layer:  # one pass over the shared prototypes for all heads
            return self.heads[0].prototypes(torch.cat(z)).view(len(z), z[0].shape[0], -1)
        return torch.stack([h.prototypes(e) for h, e in zip(self.heads, z)])


class Teacher(nn.Module):
    """Encoder + one head on the last stage; ``forward`` gives ``(N, K)`` logits."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.encoder.return_skips = False  # only the last stage is used
        self.head = head
        self._compiled_pool = None
        for p in self.parameters():
            p.requires_grad_(False)

    def compile_encoder(self, **options) -> None:
        """``torch.compile`` the encoder with the pooling (see :meth:`Student.compile_encoder`)."""
        self._compiled_pool = torch.compile(self._pool, **options)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return global_average_pool(self.encoder(x))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return (self._compiled_pool or self._pool)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


class DeSDNetwork(nn.Module):
    """The whole DeSD model: ``student``, ``teacher`` and the teacher-output ``center``.

    ``shared_last_layer`` (not the paper's set-up, off by default) gives all student heads
    one weight-normalised last layer, the ``K`` prototypes, instead of one each: with
    ``K = 65536`` that removes 16.8M parameters (and their gradients and AdamW state) per
    stage beyond the first. State-dict keys stay the same (the shared weight appears
    under every head's name).
    """

    def __init__(self, encoder: nn.Module, stage_channels: Sequence[int], out_dim: int,
                 hidden_dim: int = 2048, bottleneck_dim: int = 256, use_bn: bool = True,
                 shared_last_layer: bool = False):
        super().__init__()
        heads = [ProjectionHead(c, out_dim, hidden_dim, bottleneck_dim, use_bn) for c in stage_channels]
        if shared_last_layer:
            for h in heads[1:]:
                h.last_layer = heads[0].last_layer
        teacher_encoder = copy.deepcopy(encoder)
        teacher_head = copy.deepcopy(heads[-1])
        self.student = Student(encoder, heads)
        self.teacher = Teacher(teacher_encoder, teacher_head)
        self.register_buffer("center", torch.zeros(1, out_dim))

    @classmethod
    def from_settings(cls, encoder: nn.Module, settings) -> "DeSDNetwork":
        """The model for ``encoder`` (a dynamic-network-architectures encoder) with the heads
        :class:`~nnunet_ssl.desd.settings.DeSDSettings` describe."""
        return cls(encoder, list(encoder.output_channels), settings.out_dim, settings.hidden_dim,
                   settings.bottleneck_dim, settings.use_bn_in_head, settings.shared_last_layer)

    def compile_encoders(self, **options) -> None:
        """``torch.compile`` the student's and the teacher's encoder (with their pooling);
        the heads, loss and updates stay eager. State-dict keys are unchanged."""
        self.student.compile_encoder(**options)
        self.teacher.compile_encoder(**options)

    def teacher_pairs(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Matching (teacher, student) parameter lists: teacher encoder and head vs. student
        encoder and last-stage head."""
        t = list(self.teacher.encoder.parameters()) + list(self.teacher.head.parameters())
        s = list(self.student.encoder.parameters()) + list(self.student.heads[-1].parameters())
        return t, s


@torch.no_grad()
def ema_update(teacher_params: Sequence[torch.Tensor], student_params: Sequence[torch.Tensor],
               momentum: float) -> None:
    """``theta_t <- m theta_t + (1 - m) theta_s`` for every pair, in one fused call.

    Example:
        >>> t, s = [torch.zeros(2)], [torch.ones(2)]
        >>> ema_update(t, s, 0.75); t[0].tolist()
        [0.25, 0.25]
    """
    if len(teacher_params) != len(student_params):
        raise ValueError("teacher and student parameter lists differ in length")
    momentum_update(teacher_params, student_params, momentum)
