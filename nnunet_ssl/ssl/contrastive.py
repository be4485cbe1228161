"""Pure functions and modules shared by the contrastive methods (SimCLR, MoCo, CM-UNet); no nnU-Net.

* Views: :func:`two_views` turns one batch of augmented patches into two views per
  sample (random crop resized back to the patch, flips, intensity scale and shift,
  noise), drawn from a :class:`torch.Generator` so that validation repeats.
* Losses: :func:`nt_xent` (SimCLR: each embedding against the other ``2B - 1`` of the
  batch) and :func:`info_nce` (a query against its positive key and a set of negatives:
  MoCo's queue, or the other samples' keys for CM-UNet), both on L2-normalised
  embeddings divided by a temperature.
* The MoCo queue: :class:`FeatureQueue`, first in first out, a module whose state (the
  keys and the write position) goes into the checkpoint.
* Networks: :class:`PooledHeadNetwork` puts a head on the average-pooled bottleneck of
  the plans' U-Net and keeps every U-Net key in its state dict (the decoder comes
  along untrained), so stock ``-pretrained_weights`` loads the checkpoint;
  :func:`projection_head` is the two-layer MLP of SimCLR and MoCo v2.
* Momentum encoders: :func:`momentum_update` (the exponential moving average).

InstanceNorm (nnU-Net's default norm) normalises each sample on its own, so MoCo's
"shuffling BN" (against batch-statistics leaks) is not needed.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


# ----------------------------------------------------------------------------- views
def _uniform(generator: torch.Generator, low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_view(sample: torch.Tensor, generator: torch.Generator, min_scale: float = 0.6,
                flip: bool = True, intensity: float = 0.1, noise: float = 0.1) -> torch.Tensor:
    """One view of one patch ``(C, *spatial)``, of the same shape.

    A box of ``s * edge`` voxels per axis (``s`` uniform in ``[min_scale, 1]``, one per
    axis) at a uniform position is resized back to the patch (linear interpolation);
    each spatial axis is flipped with probability 1/2 (``flip``); the intensities are
    scaled by ``1 + u`` and shifted by ``v`` (``u, v`` uniform in ``[-intensity, intensity]``,
    in the units of the normalised image), and Gaussian noise with a standard deviation
    uniform in ``[0, noise]`` is added.
    """
    spatial = sample.shape[1:]
    scales = _uniform(generator, min_scale, 1.0, len(spatial))
    index = [slice(None)]
    for edge, s in zip(spatial, scales.tolist()):
        size = max(1, int(round(edge * s)))
        start = int(torch.randint(0, edge - size + 1, (1,), generator=generator))
        index.append(slice(start, start + size))
    view = sample[tuple(index)]
    if view.shape[1:] != spatial:
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
        view = F.interpolate(view[None].float(), size=tuple(spatial), mode=mode, align_corners=False)[0]
        view = view.to(sample.dtype)
    if flip:
        axes = [a + 1 for a in range(len(spatial)) if bool(torch.rand(1, generator=generator) < 0.5)]
        if axes:
            view = view.flip(axes)
    scale = 1.0 + float(_uniform(generator, -intensity, intensity))
    shift = float(_uniform(generator, -intensity, intensity))
    sigma = float(_uniform(generator, 0.0, noise))
    out = view * scale + shift
    if sigma > 0:
        out = out + sigma * torch.randn(view.shape, generator=generator).to(view.device, view.dtype)
    return out


def two_views(data: torch.Tensor, generator: torch.Generator, **view_settings) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent :func:`random_view` s of every sample of ``data`` ``(B, C, *spatial)``; ``data`` unchanged."""
    first = torch.stack([random_view(x, generator, **view_settings) for x in data])
    second = torch.stack([random_view(x, generator, **view_settings) for x in data])
    return first, second


# ----------------------------------------------------------------------------- losses
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's loss: sample ``i`` of ``z1`` and of ``z2`` are a positive pair, every other embedding
    of the ``2B`` a negative.

    Returns:
        ``(loss, correct)``: the mean cross-entropy over the ``2B`` anchors, and how many anchors
        rank their positive first among the other ``2B - 1``.

    Example:
        >>> z = torch.eye(2)
        >>> loss, correct = nt_xent(z, z, 0.1); int(correct)
        4
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    loss = F.cross_entropy(logits, positive)
    correct = (logits.argmax(dim=1) == positive).sum()
    return loss, correct


def info_nce(query: torch.Tensor, key: torch.Tensor, negatives: Optional[torch.Tensor],
             temperature: float, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of each query against its key and negatives.

    Args:
        query: ``(B, D)``.
        key: ``(B, D)`` positives, row ``i`` for query ``i`` (no gradient is needed through them);
            with ``negatives=None`` it may hold more rows (every process's keys), query ``i``'s
            positive at row ``offset + i``.
        negatives: ``(K, D)`` shared negatives (MoCo's queue); ``None``: the other rows of ``key``.
        temperature: The softmax temperature.
        offset: See ``key``.

    Returns:
        ``(loss, correct)``: the mean cross-entropy, and how many queries score their positive first.
    """
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(key.float(), dim=1)
    if negatives is None:
        logits = q @ k.T / temperature
        positive = torch.arange(q.shape[0], device=q.device) + offset
    else:
        n = F.normalize(negatives.float(), dim=1)
        logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ n.T], dim=1) / temperature
        positive = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    loss = F.cross_entropy(logits, positive)
    return loss, (logits.argmax(dim=1) == positive).sum()


def gather(x: torch.Tensor, differentiable: bool = False) -> tuple[torch.Tensor, int]:
    """Every process's ``x`` concatenated along the first axis (rank order), and where this process's
    rows start; ``(x, 0)`` outside ``torch.distributed``.

    ``differentiable``: gradients flow back to each process's own rows (summed over the
    processes); a loss computed on the gathered rows by
    every process then has DDP's averaged gradient of one loss on the global batch.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    offset = dist.get_rank() * x.shape[0]
    if differentiable:
        return _GatherRows.apply(x), offset
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts), offset


class _GatherRows(torch.autograd.Function):
    """All processes' rows, concatenated; backward: every process's gradient of the gathered rows
    summed (all-reduce) and this process's own rows kept."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = (dist.get_rank() * x.shape[0], x.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start, n = ctx.rows
        return grad[start:start + n]


# ----------------------------------------------------------------------------- MoCo's queue
class FeatureQueue(nn.Module):
    """First-in-first-out store of the last ``size`` keys (buffers ``keys`` and ``pointer``).

    Example:
        >>> q = FeatureQueue(3, 1); q.push(torch.tensor([[1.], [2.]])); q.push(torch.tensor([[3.], [4.]]))
        >>> q.ordered()[:, 0].tolist()  # oldest first: 1 was pushed out
        [2.0, 3.0, 4.0]
    """

    def __init__(self, size: int, dim: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        # MoCo starts from random unit vectors: negatives that carry no information
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Write ``keys`` ``(N, D)`` over the oldest entries (wrapping around the end)."""
        size = self.keys.shape[0]
        keys = keys.detach().to(self.keys.dtype)[-size:]
        rows = (int(self.pointer) + torch.arange(keys.shape[0], device=self.keys.device)) % size
        self.keys[rows] = keys
        self.pointer.fill_((int(self.pointer) + keys.shape[0]) % size)

    def ordered(self) -> torch.Tensor:
        """The keys, oldest first."""
        return torch.roll(self.keys, -int(self.pointer), dims=0)


# ----------------------------------------------------------------------------- networks
def projection_head(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """SimCLR's / MoCo v2's projection: Linear, ReLU, Linear."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features))


def take_unet(module: nn.Module, unet: nn.Module) -> None:
    """Give ``module`` the U-Net's ``encoder`` and ``decoder`` (so its state-dict keys are the U-Net's) and
    the key maps nnU-Net's and this package's tools read (``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj``)."""
    module.encoder = unet.encoder
    module.decoder = unet.decoder
    for name in ("key_to_encoder", "key_to_stem", "keys_to_in_proj"):
        if hasattr(unet, name):
            setattr(module, name, getattr(unet, name))


class PooledHeadNetwork(nn.Module):
    """nnU-Net's U-Net with ``head`` on its average-pooled bottleneck; state-dict keys: the U-Net's and
    ``head.*``.

    The decoder is kept (its own parameters frozen) so that the checkpoint holds every
    key of the U-Net: stock ``-pretrained_weights`` loads it and ignores the head, which
    the target network does not have.
    """

    def __init__(self, unet: nn.Module, head: nn.Module):
        super().__init__()
        take_unet(self, unet)
        self.head = head
        encoder_parameters = {id(p) for p in self.encoder.parameters()}
        for p in self.decoder.parameters():
            if id(p) not in encoder_parameters:
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pooled_bottleneck(self.encoder, x))


def pooled_bottleneck(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(B, C)``: the encoder's deepest features averaged over space."""
    features = encoder(x)
    bottleneck = features[-1] if isinstance(features, (list, tuple)) else features
    return bottleneck.flatten(2).mean(dim=2)


class MomentumBranch(nn.Module):
    """A frozen copy of an encoder and a head, moved towards the online ones by :meth:`update`."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.head = copy.deepcopy(head)
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pooled_bottleneck(self.encoder, x))

    def update(self, encoder: nn.Module, head: nn.Module, momentum: float) -> None:
        momentum_update(list(self.encoder.parameters()) + list(self.head.parameters()),
                        list(encoder.parameters()) + list(head.parameters()), momentum)


@torch.no_grad()
def momentum_update(target: Sequence[torch.Tensor], online: Sequence[torch.Tensor], momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online``, for every pair (fused where torch can).

    Example:
        >>> t, o = [torch.zeros(2)], [torch.ones(2)]
        >>> momentum_update(t, o, 0.75); t[0].tolist()
        [0.25, 0.25]
    """
    target, online = list(target), [p.detach() for p in online]
    if len(target) != len(online):
        raise ValueError("the momentum and online parameter lists differ in length")
    get_ema_multi_avg_fn(momentum)(target, online, None)
