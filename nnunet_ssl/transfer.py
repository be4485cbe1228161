"""SSL checkpoint -> a checkpoint that stock ``nnUNetv2_train -pretrained_weights`` accepts.

nnU-Net's ``load_pretrained_weights`` asserts that every key of the network
(except ``.seg_layers.``) is in the file with the same shape, so an encoder-only
file is refused. The transfer therefore builds the complete target network from
the target plans exactly as ``nnUNetTrainer`` does (decoder and segmentation
layers initialised as nnU-Net initialises them), puts the SSL encoder into it
after a strict compatibility check, and saves the whole state dict.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import torch

from nnunet_ssl.checkpoint import FORMAT, save_atomic, strip_wrapper_prefixes
from nnunet_ssl.errors import UserError


@dataclass(frozen=True)
class TransferReport:
    """What the transfer did."""

    output: Path
    source: str  # "teacher" or "student"
    n_encoder_tensors: int
    n_network_tensors: int


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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an SSL checkpoint written by nnUNetTrainerDeSD (no 'ssl' entry of "
                        f"format {FORMAT}); give checkpoint_final.pth, checkpoint_best.pth or "
                        "checkpoint_latest.pth from the SSL training's output folder")
    return checkpoint


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


def build_target_network(dataset: str | int, plans: str = "nnUNetPlans",
                         configuration: str = "3d_fullres") -> torch.nn.Module:
    """The network ``nnUNetTrainer`` would build for the target dataset, plans and configuration."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ssl.planning import dataset_name, require_env

    require_env("nnUNet_preprocessed")
    name = dataset_name(dataset)
    folder = Path(os.environ["nnUNet_preprocessed"]) / name
    plans_file = folder / f"{plans}.json"
    if not plans_file.is_file():
        raise UserError(f"plans {plans_file} not found; plan the target dataset first "
                        f"(nnunet-ssl plan -d {dataset} or nnUNetv2_plan_and_preprocess)")
    plans_manager = PlansManager(str(plans_file))
    if configuration not in plans_manager.available_configurations:
        raise UserError(f"configuration {configuration!r} not in {plans_file.name}; available: "
                        f"{plans_manager.available_configurations}")
    dataset_json = load_json(str(folder / "dataset.json"))
    cm = plans_manager.get_configuration(configuration)
    n_in = determine_num_input_channels(plans_manager, cm, dataset_json)
    n_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    return nnUNetTrainer.build_network_architecture(plans_manager, cm, n_in, n_out, True)


def check_compatible(network_state: Mapping[str, torch.Tensor], encoder: Mapping[str, torch.Tensor],
                     prefix: str = "encoder.") -> None:
    """Fail at the first encoder key of the target network that the SSL encoder lacks or shapes differently."""
    advice = ("the target plans must give the encoder the SSL plans' topology (stages, features, kernels, "
              "strides, normalisation, input channels): plan the target with the SSL plans' architecture, "
              "or pretrain on plans that match the target")
    target_keys = [k for k in network_state if k.startswith(prefix)]
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


def transfer(ssl_checkpoint: str | os.PathLike, dataset: str | int, output: str | os.PathLike,
             plans: str = "nnUNetPlans", configuration: str = "3d_fullres", source: str = "teacher",
             force: bool = False) -> TransferReport:
    """Write a complete nnU-Net network checkpoint whose encoder is the SSL encoder.

    Example:
        >>> transfer("res/.../fold_all/checkpoint_final.pth", 502, "pretrained.pth")  # doctest: +SKIP
    """
    output = Path(output)
    if output.exists() and not force:
        raise UserError(f"{output} exists; choose another name or pass --force to overwrite it")
    if not output.parent.is_dir():
        raise UserError(f"output folder {output.parent} does not exist")
    checkpoint = load_ssl_checkpoint(ssl_checkpoint)
    encoder = encoder_state(checkpoint, source)
    network = build_target_network(dataset, plans, configuration)
    state = network.state_dict()
    check_compatible(state, encoder)
    network.encoder.load_state_dict({k[len("encoder."):]: v for k, v in encoder.items()}, strict=True)
    meta = checkpoint["ssl"]
    save_atomic({
        "network_weights": network.state_dict(),
        "nnunet_ssl_transfer": {
            "source_checkpoint": str(Path(ssl_checkpoint).resolve()),
            "source": source,
            "ssl_dataset": meta.get("dataset_name"),
            "ssl_plans": meta.get("plans_name"),
            "ssl_configuration": meta.get("configuration"),
            "ssl_settings": meta.get("settings"),
            "target_dataset": str(dataset),
            "target_plans": plans,
            "target_configuration": configuration,
            "encoder_keys": sorted(encoder),
        },
    }, output)
    return TransferReport(output, source, len(encoder), len(state))
