"""Which parameters are the encoder, its stages, and freezing them.

The encoder is found through the attributes that dynamic-network-architectures
declares on its networks: ``key_to_encoder`` (e.g. ``"encoder.stages"``) and
``key_to_stem`` (``"encoder.stages.0"`` for ``PlainConvUNet``, inside the
encoder; ``"encoder.stem"`` for ``ResidualEncoderUNet``, beside the stages).
A network that declares neither falls back to its ``encoder`` submodule.

Parameters are told apart by identity, not by name: nnU-Net's ``UNetDecoder``
keeps a reference to the encoder, so every encoder tensor also appears as
``decoder.encoder.*`` in ``named_parameters(remove_duplicate=False)`` and in the
state dict. "Decoder" (non-encoder) parameters are therefore all parameters of
the network that are not encoder parameters, which excludes that alias.

Freezing semantics (see ``docs/finetuning.md``):

* a frozen parameter has ``requires_grad=False`` and ``grad=None``; PyTorch's SGD
  skips parameters whose ``grad`` is ``None`` entirely, so it gets no update, no
  weight decay and no momentum step;
* a parameter that is unfrozen starts with an empty optimiser state (its
  momentum buffer is dropped), so stale momentum from before a freeze never
  moves it;
* normalisation layers with running statistics (BatchNorm) inside frozen stages
  are put in eval mode, so their statistics stay as loaded. nnU-Net's default
  InstanceNorm keeps no running statistics; its affine weight and bias are
  ordinary parameters and are frozen with the rest.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence

import torch
from torch import nn


def unwrap(network: nn.Module) -> nn.Module:
    """The plain network inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(network, nn.parallel.DistributedDataParallel):
            network = network.module
        elif hasattr(network, "_orig_mod") and isinstance(network._orig_mod, nn.Module):
            network = network._orig_mod
        else:
            return network


def _submodule(network: nn.Module, key: Optional[str]) -> Optional[nn.Module]:
    if not key:
        return None
    try:
        return network.get_submodule(key)
    except AttributeError:
        return None


def _inside(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def encoder_prefixes(network: nn.Module) -> tuple[str, ...]:
    """Module paths that hold the encoder: ``key_to_encoder`` and, when it lies outside it, ``key_to_stem``.

    Example:
        >>> encoder_prefixes(plain_conv_unet)  # doctest: +SKIP
        ('encoder.stages',)
    """
    network = unwrap(network)
    enc = getattr(network, "key_to_encoder", None)
    stem = getattr(network, "key_to_stem", None)
    if enc and _submodule(network, enc) is not None:
        prefixes = [enc]
        if stem and not _inside(stem, enc) and _submodule(network, stem) is not None:
            prefixes.insert(0, stem)
        return tuple(prefixes)
    if _submodule(network, "encoder") is not None:
        return ("encoder",)
    raise ValueError(f"{type(network).__name__} declares no key_to_encoder and has no `encoder` submodule; "
                     "cannot tell its encoder apart")


def encoder_stages(network: nn.Module) -> List[nn.Module]:
    """The encoder as an ordered list of modules, from the stem (index 0) to the deepest stage.

    For a ``PlainConvUNet`` these are ``encoder.stages[0..n-1]`` (the stem is stage 0);
    for a ``ResidualEncoderUNet`` ``encoder.stem`` comes first, then the stages.
    An encoder module that is not a sequence of stages is one group.
    """
    network = unwrap(network)
    groups: List[nn.Module] = []
    for key in encoder_prefixes(network):
        module = network.get_submodule(key)
        if isinstance(module, (nn.Sequential, nn.ModuleList)) and key != getattr(network, "key_to_stem", None):
            groups.extend(module.children())
        elif key == "encoder" and isinstance(getattr(module, "stages", None), (nn.Sequential, nn.ModuleList)):
            stem = getattr(module, "stem", None)
            if isinstance(stem, nn.Module):
                groups.append(stem)
            groups.extend(module.stages.children())
        else:
            groups.append(module)
    covered = {id(p) for g in groups for p in g.parameters()}
    missing = [p for p in encoder_parameters(network) if id(p) not in covered]
    if missing:  # parameters outside the stage modules: keep them with the stem (unfrozen last)
        holder = nn.Module()
        holder.extra = nn.ParameterList(missing)
        groups[0] = nn.ModuleList([groups[0], holder])
    return groups


def encoder_parameters(network: nn.Module) -> List[nn.Parameter]:
    """The encoder's parameters, each once."""
    network = unwrap(network)
    seen, params = set(), []
    for key in encoder_prefixes(network):
        for p in network.get_submodule(key).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def split_parameters(network: nn.Module) -> tuple[List[nn.Parameter], List[nn.Parameter]]:
    """``(encoder, rest)``: every parameter of the network once, by identity.

    ``rest`` is the decoder with its segmentation layers; it does not contain the
    encoder that nnU-Net's decoder references as ``decoder.encoder``.
    """
    encoder = encoder_parameters(network)
    ids = {id(p) for p in encoder}
    rest = [p for p in unwrap(network).parameters() if id(p) not in ids]
    return encoder, rest


def encoder_parameter_names(network: nn.Module) -> List[str]:
    """Names (as in ``named_parameters()``, first name of each tensor) of the encoder's parameters."""
    ids = {id(p) for p in encoder_parameters(network)}
    return [n for n, p in unwrap(network).named_parameters() if id(p) in ids]


def _has_running_stats(module: nn.Module) -> bool:
    return getattr(module, "track_running_stats", False) and getattr(module, "running_mean", None) is not None


def set_trainable(modules: Iterable[nn.Module], trainable: bool,
                  optimizer: Optional[torch.optim.Optimizer] = None) -> int:
    """Freeze (``trainable=False``) or unfreeze the parameters of ``modules``; return how many changed.

    Freezing sets ``requires_grad=False`` and drops the gradient. Unfreezing a
    frozen parameter drops its optimiser state too (see the module docstring).
    Normalisation layers with running statistics follow: eval mode when frozen;
    the trainer's next ``network.train()`` restores train mode for unfrozen ones.
    """
    changed = 0
    for module in modules:
        for p in module.parameters():
            if p.requires_grad != trainable:
                changed += 1
                p.requires_grad_(trainable)
                if trainable and optimizer is not None:
                    optimizer.state.pop(p, None)
            if not trainable:
                p.grad = None
        if not trainable:
            for m in module.modules():
                if _has_running_stats(m):
                    m.eval()
    return changed


def apply_frozen_stages(network: nn.Module, frozen: Sequence[bool],
                        optimizer: Optional[torch.optim.Optimizer] = None) -> int:
    """Freeze stage ``i`` of :func:`encoder_stages` where ``frozen[i]``, unfreeze the others."""
    stages = encoder_stages(network)
    if len(frozen) != len(stages):
        raise ValueError(f"got {len(frozen)} flags for {len(stages)} encoder stages")
    changed = set_trainable([s for s, f in zip(stages, frozen) if not f], True, optimizer)
    changed += set_trainable([s for s, f in zip(stages, frozen) if f], False, optimizer)
    return changed


def rewrap_ddp(network: nn.Module, device_ids: Optional[Sequence[int]] = None) -> nn.Module:
    """A fresh ``DistributedDataParallel`` around the module inside ``network``.

    DDP fixes at construction the parameters it reduces (those with
    ``requires_grad``); after freezing or unfreezing it must be rebuilt, or its
    reducer waits for gradients that never come (or ignores new ones).
    """
    if not isinstance(network, nn.parallel.DistributedDataParallel):
        return network
    return nn.parallel.DistributedDataParallel(network.module, device_ids=device_ids)


# ---------------------------------------------------------------- schedules (pure)
NEVER = math.inf


def gradual_unfreeze_epochs(n_stages: int, start_epoch: int, interval: int) -> List[int]:
    """Epoch at which each encoder stage becomes trainable, deepest first, the stem last.

    Stage ``n_stages - 1`` (the deepest) is unfrozen at ``start_epoch``, the one
    above it ``interval`` epochs later, and so on up to stage 0 (the stem) at
    ``start_epoch + (n_stages - 1) * interval``.

    Example:
        >>> gradual_unfreeze_epochs(4, 10, 5)
        [25, 20, 15, 10]
    """
    if n_stages < 1 or start_epoch < 0 or interval < 0:
        raise ValueError("need n_stages >= 1, start_epoch >= 0 and interval >= 0")
    return [start_epoch + (n_stages - 1 - s) * interval for s in range(n_stages)]


def default_gradual_schedule(num_epochs: int, n_stages: int) -> tuple[int, int]:
    """``(start_epoch, interval)`` when the settings leave them open.

    The deepest stage is unfrozen after a tenth of the run and the stem at half
    of it, the stages in between evenly spaced (intervals rounded down).

    Example:
        >>> default_gradual_schedule(100, 6)
        (10, 8)
    """
    start = num_epochs // 10
    interval = max(1, (num_epochs // 2 - start) // max(1, n_stages - 1))
    return start, interval


def frozen_at(epoch: int, unfreeze_epochs: Sequence[float]) -> List[bool]:
    """Which stages are frozen during ``epoch`` (0-based): those whose unfreeze epoch is still ahead.

    Example:
        >>> frozen_at(33, [33, 33])
        [False, False]
        >>> frozen_at(32, [33, 33])
        [True, True]
    """
    return [epoch < u for u in unfreeze_epochs]
