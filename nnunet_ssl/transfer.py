"""SSL checkpoint -> a checkpoint that stock ``nnUNetv2_train -pretrained_weights`` accepts.

nnU-Net's ``load_pretrained_weights`` asserts that every key of the network
(except ``.seg_layers.``) is in the file with the same shape, so an encoder-only
file is refused. The transfer therefore builds the complete target network from
the target plans exactly as ``nnUNetTrainer`` does (decoder and segmentation
layers initialised as nnU-Net initialises them), puts the SSL encoder into it
after a strict compatibility check, and saves the whole state dict.

Three kinds of source checkpoint are accepted:

* this package's DeSD checkpoints (an ``ssl`` entry; teacher or student encoder);
* checkpoints that carry an ``nnssl_adaptation_plan`` entry (nnssl's layout):
  the tensors under its ``key_to_encoder`` (and ``key_to_stem`` where the stem
  lies outside the encoder) are mapped onto the target network's
  ``key_to_encoder``/``key_to_stem``. This package's pretext trainers
  (:mod:`nnunet_ssl.ssl`) write such an entry beside their ``ssl`` entry, whose
  architecture and settings the transfer then checks and records;
* stock nnU-Net checkpoints (``nnUNetTrainer`` and its variants, e.g. trained on the
  ASPECTS-zone pretext dataset of ``nnunet-ssl prepare-aspects``): their ``init_args``
  hold the plans and configuration the network was built from, which give the
  architecture to check; the encoder is found under the network's own
  ``key_to_encoder``/``key_to_stem``. The decoder and segmentation layers are not
  taken (the target has other labels).

Everything must match the target network exactly, except, when asked with
``in_channels_rule``, the number of input channels of the first convolution
(the network's ``keys_to_in_proj``); :func:`adapt_input_channels` documents
the rules.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from nnunet_ssl.checkpoint import (
    ADAPTATION_PLAN_KEY, FORMAT, check_adaptation_plan, save_atomic, strip_wrapper_prefixes)
from nnunet_ssl.errors import UserError

IN_CHANNELS_RULES = ("copy", "mean", "zero")
STOCK_FORMAT = "nnunet"  # source_format of a stock nnU-Net checkpoint: "nnunet:TRAINER_NAME"
# architecture settings that change what the encoder's weights mean while leaving their shapes alone
ARCHITECTURE_SETTINGS = ("network_class", "strides", "kernel_sizes", "conv_op", "norm_op", "nonlin")


@dataclass(frozen=True)
class TransferReport:
    """What the transfer did."""

    output: Path
    source: str  # "teacher" or "student"; "encoder" for a foreign (nnssl-layout) checkpoint
    n_encoder_tensors: int
    n_network_tensors: int
    in_channels: Optional[tuple[int, int]] = None  # (pretrained, target) where they differ
    in_channels_rule: Optional[str] = None
    n_decoder_tensors: int = 0  # with decoder=True: the pretrained decoder's tensors (output layers excepted)


def load_ssl_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint on the CPU and check that it is a DeSD checkpoint of this package."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"SSL checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"cannot read {path} as a PyTorch checkpoint: {e}") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise UserError(f"{path} is not an nnU-Net checkpoint (no 'network_weights')")
    meta = checkpoint.get("ssl")
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        return checkpoint
    if ADAPTATION_PLAN_KEY in checkpoint:
        problem = check_adaptation_plan(checkpoint[ADAPTATION_PLAN_KEY])
        if problem:
            raise UserError(f"{path}: {problem}; cannot tell where its encoder is")
        return checkpoint
    if is_stock(checkpoint):
        return checkpoint
    raise UserError(f"{path} is not an SSL checkpoint written by nnUNetTrainerDeSD (no 'ssl' entry of "
                    f"format {FORMAT}), nor one with an '{ADAPTATION_PLAN_KEY}' entry (as the pretext trainers "
                    "write), nor a stock nnU-Net checkpoint (no 'init_args' with plans and configuration); give "
                    "checkpoint_final.pth, checkpoint_best.pth or checkpoint_latest.pth from the pretraining's "
                    "output folder")


def is_stock(checkpoint: Mapping) -> bool:
    """True for a stock nnU-Net checkpoint: no SSL entries, ``init_args`` with the plans and configuration."""
    args = checkpoint.get("init_args")
    return (isinstance(args, Mapping) and isinstance(args.get("plans"), Mapping)
            and isinstance(args.get("configuration"), str) and "ssl" not in checkpoint
            and ADAPTATION_PLAN_KEY not in checkpoint)


def stock_architecture(checkpoint: Mapping, path) -> dict:
    """The plans ``architecture`` (class name, kwargs) a stock checkpoint's network was built from."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    args = checkpoint["init_args"]
    try:
        cm = PlansManager(dict(args["plans"])).get_configuration(args["configuration"])
        return {"network_class_name": cm.network_arch_class_name, "arch_kwargs": cm.network_arch_init_kwargs}
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: its init_args do not describe the network (configuration "
                        f"{args.get('configuration')!r}: {e})") from None


def is_foreign(checkpoint: Mapping) -> bool:
    """True for a checkpoint that only an ``nnssl_adaptation_plan`` entry explains (not a DeSD one)."""
    meta = checkpoint.get("ssl")
    return not (isinstance(meta, dict) and meta.get("format") == FORMAT)


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def foreign_encoder_state(checkpoint: Mapping, network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder tensors of an nnssl-layout checkpoint, renamed into ``network``'s namespace.

    Source keys under the plan's ``key_to_stem`` go to the network's ``key_to_stem``
    when the network keeps its stem outside its encoder (``ResidualEncoderUNet``);
    keys under the plan's ``key_to_encoder`` go to the network's ``key_to_encoder``.
    """
    plan = checkpoint[ADAPTATION_PLAN_KEY]
    src_enc, src_stem = plan["key_to_encoder"], plan["key_to_stem"]
    dst_enc = getattr(network, "key_to_encoder", None)
    dst_stem = getattr(network, "key_to_stem", None)
    if not dst_enc or not dst_stem:
        raise UserError(f"the target network {type(network).__name__} declares no key_to_encoder/key_to_stem; "
                        f"a checkpoint with an {ADAPTATION_PLAN_KEY} entry needs them to place its encoder")
    stem_outside = not _under(dst_stem, dst_enc)
    state = {}
    for key, value in checkpoint["network_weights"].items():
        key = strip_wrapper_prefixes(key)
        if stem_outside and _under(key, src_stem):
            state[dst_stem + key[len(src_stem):]] = value
        elif _under(key, src_enc):
            state[dst_enc + key[len(src_enc):]] = value
    if not state:
        raise UserError(f"the checkpoint holds no weights under its {ADAPTATION_PLAN_KEY}'s key_to_encoder "
                        f"{src_enc!r}")
    return state


def encoder_state(checkpoint: Mapping, source: str = "teacher") -> dict[str, torch.Tensor]:
    """The encoder's tensors from an SSL checkpoint, keyed as in the U-Net (``encoder.*``).

    Args:
        checkpoint: A loaded SSL checkpoint.
        source: ``"teacher"`` (the EMA encoder, the default and the paper's choice) or ``"student"``.
    """
    prefixes = checkpoint["ssl"]["encoder_prefixes"]
    if source not in prefixes:
        raise UserError(f"unknown encoder source {source!r}; choose one of {sorted(prefixes)}")
    prefix = prefixes[source]
    target = checkpoint["ssl"].get("target_encoder_key", "encoder") + "."
    state = {}
    for key, value in checkpoint["network_weights"].items():
        key = strip_wrapper_prefixes(key)
        if key.startswith(prefix):
            state[target + key[len(prefix):]] = value
    if not state:
        raise UserError(f"the checkpoint holds no {source} encoder weights (no keys under {prefix!r})")
    return state


def _per_stage(values, ndim: int) -> list:
    """Strides or kernel sizes as one list per stage (nnU-Net allows a bare int for all axes)."""
    return [[int(v)] * ndim if isinstance(v, (int, float)) else [int(x) for x in v] for v in values or ()]


def architecture_settings(architecture: Mapping) -> dict:
    """The :data:`ARCHITECTURE_SETTINGS` of a plans ``architecture`` block or an nnssl ``architecture_plans``.

    Settings the block does not record are ``None`` (nnssl names its classes by short aliases such
    as ``ResEncL``, so only nnU-Net's ``network_class_name`` counts as the class).
    """
    kwargs = architecture.get("arch_kwargs") or {}
    ndim = 3 if "3d" in str(kwargs.get("conv_op", "3d")).lower() else 2
    return {
        "network_class": architecture.get("network_class_name"),
        "strides": _per_stage(kwargs["strides"], ndim) if kwargs.get("strides") else None,
        "kernel_sizes": _per_stage(kwargs["kernel_sizes"], ndim) if kwargs.get("kernel_sizes") else None,
        "conv_op": kwargs.get("conv_op"),
        "norm_op": kwargs.get("norm_op"),
        "nonlin": kwargs.get("nonlin"),
    }


def check_architecture(source: Optional[Mapping], target: Mapping, allowed: Sequence[str] = ()) -> None:
    """Fail at the first architecture setting (:data:`ARCHITECTURE_SETTINGS`) that differs, unless allowed.

    Other strides, kernel sizes or layer classes leave the tensors' shapes as they are but change
    what the pretrained weights compute, so the shape check alone would let them through.
    ``source`` ``None`` (a checkpoint that records no architecture) skips the check.
    """
    unknown = sorted(set(allowed) - set(ARCHITECTURE_SETTINGS))
    if unknown:
        raise UserError(f"unknown architecture setting(s) {unknown}; choose from {list(ARCHITECTURE_SETTINGS)}")
    if not source:
        return
    pretrained, wanted = architecture_settings(source), architecture_settings(target)
    for name in ARCHITECTURE_SETTINGS:
        if name not in allowed and pretrained[name] is not None and pretrained[name] != wanted[name]:
            raise UserError(f"{name} differ: SSL checkpoint {pretrained[name]}, target plans {wanted[name]}; the "
                            "pretrained weights were learnt for another topology. Plan the target from the SSL "
                            "plans (nnunet-ssl plan-target), or pass --allow-architecture-difference "
                            f"{name} to transfer them anyway")


def _target_plans(dataset: str | int, plans: str, configuration: str):
    """``(plans manager, configuration manager, dataset.json)`` of the target, with clear errors."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ssl.planning import dataset_name, require_env
    from nnunet_ssl.target_plans import incomplete_plans_problem

    require_env("nnUNet_preprocessed")
    name = dataset_name(dataset)
    folder = Path(os.environ["nnUNet_preprocessed"]) / name
    plans_file = folder / f"{plans}.json"
    if not plans_file.is_file():
        raise UserError(f"plans {plans_file} not found; plan the target dataset first "
                        f"(nnunet-ssl plan -d {dataset} or nnUNetv2_plan_and_preprocess)")
    plans_manager = PlansManager(str(plans_file))
    problem = incomplete_plans_problem(plans_manager.plans, plans_file)
    if problem:
        raise UserError(problem)
    if configuration not in plans_manager.available_configurations:
        raise UserError(f"configuration {configuration!r} not in {plans_file.name}; available: "
                        f"{plans_manager.available_configurations}")
    dataset_json = load_json(str(folder / "dataset.json"))
    return plans_manager, plans_manager.get_configuration(configuration), dataset_json


def build_target_network(dataset: str | int, plans: str = "nnUNetPlans",
                         configuration: str = "3d_fullres") -> torch.nn.Module:
    """The network ``nnUNetTrainer`` would build for the target dataset, plans and configuration."""
    return _build(*_target_plans(dataset, plans, configuration))


def _build(plans_manager, cm, dataset_json) -> torch.nn.Module:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    n_in = determine_num_input_channels(plans_manager, cm, dataset_json)
    n_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    return nnUNetTrainer.build_network_architecture(plans_manager, cm, n_in, n_out, True)


def adapt_input_channels(weight: torch.Tensor, n_new: int, rule: str) -> torch.Tensor:
    """The first convolution's kernel ``(out, n_old, *k)`` for ``n_new`` input channels.

    Rules (``n_old`` pretrained channels, ``n_new`` target channels):

    * ``copy``: new channel ``j`` gets pretrained channel ``j mod n_old``, every kernel
      scaled by ``n_old / n_new`` (adding channels only). From one channel to two,
      each channel gets half the kernel: two identical inputs give the pretrained response.
    * ``mean``: every new channel gets the mean pretrained kernel, scaled by
      ``n_old / n_new``; the same image in every channel gives the response the
      pretrained network gives to that image in all its channels.
    * ``zero``: channels present in both keep their kernels unchanged, new channels
      start at zero, pretrained channels beyond ``n_new`` are dropped. The network
      starts out answering exactly as pretrained to the channels it knows.

    Example:
        >>> w = torch.ones(4, 1, 3, 3, 3)
        >>> adapt_input_channels(w, 2, "copy")[:, :, 0, 0, 0].tolist()[0]
        [0.5, 0.5]
        >>> adapt_input_channels(w, 2, "zero")[:, :, 0, 0, 0].tolist()[0]
        [1.0, 0.0]
    """
    n_old = weight.shape[1]
    if rule not in IN_CHANNELS_RULES:
        raise UserError(f"unknown input-channel rule {rule!r}; choose one of {list(IN_CHANNELS_RULES)}")
    if n_new < 1:
        raise UserError(f"the target needs at least one input channel, got {n_new}")
    if rule == "copy":
        if n_new < n_old:
            raise UserError(f"rule 'copy' adds channels; the target has fewer ({n_new}) than the pretrained "
                            f"encoder ({n_old}): use 'zero' (keep the first {n_new}) or 'mean'")
        return (weight[:, [j % n_old for j in range(n_new)]] * (n_old / n_new)).contiguous()
    if rule == "mean":
        mean = weight.mean(dim=1, keepdim=True) * (n_old / n_new)
        return mean.expand(-1, n_new, *([-1] * (weight.dim() - 2))).contiguous()
    out = weight.new_zeros((weight.shape[0], n_new, *weight.shape[2:]))
    keep = min(n_old, n_new)
    out[:, :keep] = weight[:, :keep]
    return out


def in_proj_weight_keys(network: torch.nn.Module) -> list[str]:
    """State-dict keys of the first convolution's kernel (every alias) from the network's ``keys_to_in_proj``."""
    return [k + ".weight" for k in getattr(network, "keys_to_in_proj", ()) or ()]


def adapt_encoder_input_channels(encoder: dict[str, torch.Tensor], network_state: Mapping[str, torch.Tensor],
                                 in_proj_keys: Sequence[str],
                                 rule: Optional[str]) -> Optional[tuple[int, int]]:
    """Apply ``rule`` in place to the input-projection kernels whose channel count differs from the target's.

    Returns ``(pretrained, target)`` channel counts where they differed, else ``None``.
    Without a rule a difference is an error that names the choices; any other
    difference of shape is left to :func:`check_compatible`.
    """
    channels = None
    for key in in_proj_keys:
        if key not in encoder or key not in network_state:
            continue
        src, dst = tuple(encoder[key].shape), tuple(network_state[key].shape)
        if src == dst or len(src) != len(dst) or src[:1] + src[2:] != dst[:1] + dst[2:]:
            continue
        if rule is None:
            raise UserError(f"input channels differ at {key}: SSL checkpoint {src[1]}, target network {dst[1]} "
                            f"{src} vs {dst}; choose how to initialise the first convolution with "
                            f"--in-channels-rule {'|'.join(IN_CHANNELS_RULES)} (see docs/finetuning.md)")
        encoder[key] = adapt_input_channels(encoder[key], dst[1], rule)
        channels = (src[1], dst[1])
    return channels


def check_compatible(network_state: Mapping[str, torch.Tensor], encoder: Mapping[str, torch.Tensor],
                     prefix: str | Sequence[str] = "encoder.") -> None:
    """Fail at the first encoder key of the target network that the SSL encoder lacks or shapes differently.

    ``prefix``: the target's encoder key prefix, or several (a stem beside the stages).
    """
    advice = ("the target plans must give the encoder the SSL plans' topology (stages, features, kernels, "
              "strides, normalisation, input channels): plan the target with the SSL plans' architecture, "
              "or pretrain on plans that match the target")
    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
    target_keys = [k for k in network_state if k.startswith(prefixes)]
    for key in target_keys:
        if key not in encoder:
            raise UserError(f"encoder key {key} {tuple(network_state[key].shape)} of the target network "
                            f"is missing in the SSL checkpoint; {advice}")
        if tuple(encoder[key].shape) != tuple(network_state[key].shape):
            raise UserError(f"shape mismatch at {key}: SSL checkpoint {tuple(encoder[key].shape)}, target "
                            f"network {tuple(network_state[key].shape)}; {advice}")
    extra = sorted(set(encoder) - set(target_keys))
    if extra:
        raise UserError(f"SSL encoder key {extra[0]} {tuple(encoder[extra[0]].shape)} has no place in the "
                        f"target network ({len(extra)} such keys); {advice}")


def decoder_state(checkpoint: Mapping, network_state: Mapping[str, torch.Tensor], path,
                  stock: bool = False) -> dict[str, torch.Tensor]:
    """The decoder's tensors of a checkpoint whose method trained one (a pretext method with a decoder,
    or a stock nnU-Net training), for every decoder key of the target network but its output layers
    (``decoder.seg_layers``, one per label set) and nnU-Net's ``decoder.encoder`` alias of the encoder.

    Fails, naming the first key, when the checkpoint lacks a target decoder key or shapes it otherwise.
    """
    own = checkpoint.get("ssl") if isinstance(checkpoint.get("ssl"), dict) else None
    if own is not None and not own.get("trains_decoder"):
        method = own.get("method") or "DeSD"
        raise UserError(f"{path}: {method} trains no decoder (its checkpoint does not record one as trained); "
                        "transfer the encoder alone (leave out --decoder)")
    if own is None and not (stock or is_stock(checkpoint)):
        raise UserError(f"{path}: --decoder takes the decoder of this package's pretext checkpoints and of stock "
                        f"nnU-Net checkpoints; this one has only an {ADAPTATION_PLAN_KEY}, which locates no decoder")
    source = {strip_wrapper_prefixes(k): v for k, v in checkpoint["network_weights"].items()}
    state = {}
    for key, value in network_state.items():
        if not key.startswith("decoder.") or key.startswith(("decoder.seg_layers.", "decoder.encoder.")):
            continue
        if key not in source:
            raise UserError(f"decoder key {key} {tuple(value.shape)} of the target network is missing in {path}")
        if tuple(source[key].shape) != tuple(value.shape):
            raise UserError(f"shape mismatch at {key}: checkpoint {tuple(source[key].shape)}, target network "
                            f"{tuple(value.shape)}; the decoder transfers only between equal architectures")
        state[key] = source[key]
    if not state:
        raise UserError(f"the target network has no decoder keys besides its output layers; nothing to take from {path}")
    return state


def _check_output(output: Path, ssl_checkpoint: Path, force: bool) -> None:
    """Refuse an output that is a folder, the checkpoint itself (in any spelling) or exists without ``force``."""
    if output.is_dir():
        raise UserError(f"{output} is a folder; give the name of the .pth file to write (e.g. {output}/pretrained.pth)")
    if output.exists() and ssl_checkpoint.exists() and os.path.samefile(output, ssl_checkpoint) \
            or output.resolve() == ssl_checkpoint.resolve():
        raise UserError(f"the output {output} is the SSL checkpoint; writing it would destroy the pretrained "
                        "weights (even with --force): choose another name")
    if output.exists() and not force:
        raise UserError(f"{output} exists; choose another name or pass --force to overwrite it")
    if not output.parent.is_dir():
        raise UserError(f"output folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise UserError(f"cannot write to {output.parent}: permission denied")


def transfer(ssl_checkpoint: str | os.PathLike, dataset: str | int, output: str | os.PathLike,
             plans: str = "nnUNetPlans", configuration: str = "3d_fullres", source: str = "teacher",
             force: bool = False, in_channels_rule: Optional[str] = None,
             allow_architecture_difference: Sequence[str] = (), decoder: bool = False) -> TransferReport:
    """Write a complete nnU-Net network checkpoint whose encoder is the SSL encoder.

    Args:
        in_channels_rule: How to initialise the first convolution when the target
            has another number of input channels than the pretrained encoder
            (``copy``, ``mean`` or ``zero``, see :func:`adapt_input_channels`);
            ``None`` refuses such a difference.
        allow_architecture_difference: Names from :data:`ARCHITECTURE_SETTINGS` that may
            differ between the SSL checkpoint's recorded architecture and the target plans
            (any other difference is refused, see :func:`check_architecture`).
        decoder: Also take the pretrained decoder (all but its output layers, which
            depend on the labels), where the method trained one (:func:`decoder_state`).

    Example:
        >>> transfer("res/.../fold_all/checkpoint_final.pth", 502, "pretrained.pth")  # doctest: +SKIP
    """
    output = Path(output)
    if in_channels_rule is not None and in_channels_rule not in IN_CHANNELS_RULES:
        raise UserError(f"unknown input-channel rule {in_channels_rule!r}; choose one of {list(IN_CHANNELS_RULES)}")
    _check_output(output, Path(ssl_checkpoint), force)
    check_architecture(None, {}, allow_architecture_difference)  # names are checked before any work
    checkpoint = load_ssl_checkpoint(ssl_checkpoint)
    foreign = is_foreign(checkpoint)
    stock = is_stock(checkpoint)
    if foreign and source != "teacher":
        raise UserError(f"{ssl_checkpoint} is not a DeSD checkpoint: it has one encoder, no {source}")
    if not foreign:
        encoder = encoder_state(checkpoint, source)
    plans_manager, cm, dataset_json = _target_plans(dataset, plans, configuration)
    # this package's own entry: DeSD's, or a pretext trainer's beside its adaptation plan
    own = checkpoint.get("ssl") if isinstance(checkpoint.get("ssl"), dict) else None
    if stock:
        recorded = stock_architecture(checkpoint, ssl_checkpoint)
    else:
        recorded = own.get("architecture") if own else checkpoint[ADAPTATION_PLAN_KEY].get("architecture_plans")
    check_architecture(recorded, {"network_class_name": cm.network_arch_class_name,
                                  "arch_kwargs": cm.network_arch_init_kwargs}, allow_architecture_difference)
    network = _build(plans_manager, cm, dataset_json)
    if foreign:
        from nnunet_ssl.finetune.freezing import encoder_prefixes

        if stock:  # same network class (checked above): its encoder lies where the target's does
            checkpoint = {**checkpoint, ADAPTATION_PLAN_KEY: {
                "key_to_encoder": getattr(network, "key_to_encoder", None),
                "key_to_stem": getattr(network, "key_to_stem", None)}}
        encoder = foreign_encoder_state(checkpoint, network)
        modules = encoder_prefixes(network)
    else:
        modules = ("encoder",)
    state = network.state_dict()
    channels = adapt_encoder_input_channels(encoder, state, in_proj_weight_keys(network), in_channels_rule)
    check_compatible(state, encoder, tuple(m + "." for m in modules))
    for module in modules:  # through the submodules, so that nnU-Net's decoder.encoder alias follows
        sub = {k[len(module) + 1:]: v for k, v in encoder.items() if k.startswith(module + ".")}
        network.get_submodule(module).load_state_dict(sub, strict=True)
    decoder_tensors = decoder_state(checkpoint, state, ssl_checkpoint, stock) if decoder else {}
    if decoder_tensors:
        network.load_state_dict({**network.state_dict(), **decoder_tensors}, strict=True)
    if own:
        meta = own
    elif stock:
        args = checkpoint["init_args"]
        meta = {"dataset_name": args["plans"].get("dataset_name"), "plans_name": args["plans"].get("plans_name"),
                "configuration": args["configuration"], "settings": None,
                "format": f"{STOCK_FORMAT}:{checkpoint.get('trainer_name', 'nnUNetTrainer')}"}
    else:
        pretrain = checkpoint[ADAPTATION_PLAN_KEY].get("pretrain_plan") or {}
        meta = {"dataset_name": pretrain.get("dataset_name"), "plans_name": pretrain.get("plans_name"),
                "configuration": next(iter(pretrain.get("configurations") or {}), None), "settings": None}
    if foreign:
        source = "encoder"
    payload = {
        "network_weights": network.state_dict(),
        "nnunet_ssl_transfer": {
            "source_checkpoint": str(Path(ssl_checkpoint).resolve()),
            "source": source,
            "source_format": meta.get("format") or ADAPTATION_PLAN_KEY,
            "ssl_dataset": meta.get("dataset_name"),
            "ssl_plans": meta.get("plans_name"),
            "ssl_configuration": meta.get("configuration"),
            "ssl_settings": meta.get("settings"),
            "target_dataset": str(dataset),
            "target_plans": plans,
            "target_configuration": configuration,
            "encoder_keys": sorted(encoder),
            "decoder_keys": sorted(decoder_tensors),
            "in_channels": list(channels) if channels else None,
            "in_channels_rule": in_channels_rule if channels else None,
            "architecture_differences_allowed": sorted(allow_architecture_difference),
        },
    }
    try:
        save_atomic(payload, output)
    except OSError as e:
        raise UserError(f"cannot write {output}: {e.strerror or e}") from None
    return TransferReport(output, source, len(encoder), len(state), channels,
                          in_channels_rule if channels else None, len(decoder_tensors))
