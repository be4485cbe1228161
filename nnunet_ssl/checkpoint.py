"""SSL checkpoint format: what is stored beside the weights, and safe writing.

An SSL checkpoint is a dict saved with ``torch.save`` in nnU-Net's layout
(``network_weights``, ``optimizer_state``, ``grad_scaler_state``, ``logging``,
``current_epoch``, ``init_args``, ``trainer_name``) plus an ``ssl`` entry that
explains the weights::

    ssl = {
        "format": "nnunet_ssl.desd/1",
        "settings": {...},                 # DeSDSettings.to_dict()
        "architecture": {"network_class_name": ..., "arch_kwargs": ..., "arch_kwargs_req_import": ...},
        "num_input_channels": 1,
        "dataset_name": ..., "plans_name": ..., "configuration": ...,
        "encoder_prefixes": {"teacher": "teacher.encoder.", "student": "student.encoder."},
        "target_encoder_key": "encoder",   # where the encoder lives in the U-Net
    }

and an ``nnssl_adaptation_plan`` entry (:func:`nnssl_adaptation_plan`) in the
layout that nnssl writes and that nnU-Net's pretrained fine-tuning path reads,
so the checkpoint can be used there too. Its keys point into this checkpoint's
``network_weights``, i.e. at the EMA teacher's encoder (``teacher.encoder.*``).
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

FORMAT = "nnunet_ssl.desd/1"
ENCODER_PREFIXES = {"teacher": "teacher.encoder.", "student": "student.encoder."}
# nnssl's adaptation-plan entry of a checkpoint, and the names it must hold
ADAPTATION_PLAN_KEY = "nnssl_adaptation_plan"
ADAPTATION_PLAN_FIELDS = ("architecture_plans", "pretrain_plan", "pretrain_num_input_channels",
                          "recommended_downstream_patchsize", "key_to_encoder", "key_to_stem",
                          "keys_to_in_proj", "key_to_lpe")


def ssl_metadata(settings: dict, configuration_manager, num_input_channels: int,
                 dataset_name: str, plans_name: str, configuration: str, format: str = FORMAT,
                 encoder_prefixes: Optional[dict] = None) -> dict:
    """The ``ssl`` entry of a checkpoint (see the module docstring).

    The pretext trainers (:mod:`nnunet_ssl.ssl.base`) write it with their own ``format``
    and one plain U-Net (``encoder_prefixes={"network": "encoder."}``).
    """
    return {
        "format": format,
        "settings": settings,
        "architecture": {
            "network_class_name": configuration_manager.network_arch_class_name,
            "arch_kwargs": configuration_manager.network_arch_init_kwargs,
            "arch_kwargs_req_import": list(configuration_manager.network_arch_init_kwargs_req_import),
        },
        "num_input_channels": int(num_input_channels),
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "configuration": configuration,
        "encoder_prefixes": dict(ENCODER_PREFIXES if encoder_prefixes is None else encoder_prefixes),
        "target_encoder_key": "encoder",
    }


def save_trainer_checkpoint(trainer, filename: str | os.PathLike) -> None:
    """nnU-Net's checkpoint rules for an SSL trainer's ``checkpoint_dict()``, written with :func:`save_atomic`.

    As nnU-Net's ``save_checkpoint``: only rank 0 writes, and nothing is written (with a line in
    the log) when the trainer's checkpointing is disabled.
    """
    if trainer.local_rank != 0:
        return
    if trainer.disable_checkpointing:
        trainer.print_to_log_file("No checkpoint written, checkpointing is disabled")
        return
    save_atomic(trainer.checkpoint_dict(), filename)


def save_atomic(obj: Any, filename: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``filename``.

    A run killed during the write leaves the previous file intact instead of a
    truncated one.
    """
    filename = Path(filename)
    fd, tmp = tempfile.mkstemp(prefix=f".{filename.name}.", suffix=".tmp", dir=filename.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, filename)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def strip_wrapper_prefixes(key: str) -> str:
    """Remove DDP's ``module.`` and ``torch.compile``'s ``_orig_mod.`` from a state-dict key."""
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
        for infix in (".module.", "._orig_mod."):
            if infix in key:
                key = key.replace(infix, ".")
                changed = True
    return key


def _plain(obj: Any) -> Any:
    """Plain Python containers and numbers only, so the entry loads with ``torch.load(weights_only=True)``."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


@functools.lru_cache(maxsize=8)
def _network_keys(arch_class_name: str, arch_kwargs_json: str, req_import: tuple, num_input_channels: int):
    """``key_to_encoder``, ``key_to_stem`` and ``keys_to_in_proj`` the architecture declares (built on 'meta')."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    try:
        with torch.device("meta"):  # no memory, no initialisation: only the attributes are wanted
            network = get_network_from_plans(arch_class_name, json.loads(arch_kwargs_json), list(req_import),
                                             num_input_channels, 2, allow_init=False, deep_supervision=False)
    except Exception:  # metadata must never stop a checkpoint from being written
        return "encoder", "encoder", ()
    encoder = getattr(network, "key_to_encoder", None) or "encoder"
    stem = getattr(network, "key_to_stem", None) or encoder
    in_proj = tuple(getattr(network, "keys_to_in_proj", ()) or ())
    return encoder, stem, in_proj


def nnssl_adaptation_plan(plans: dict, configuration: str, num_input_channels: int,
                          pretrain_patch_size: Sequence[int], weights_prefix: str = "teacher.") -> dict:
    """The ``nnssl_adaptation_plan`` entry of an SSL checkpoint.

    It follows nnssl's ``AdaptationPlan.serialize()`` layout: ``architecture_plans``
    (nnU-Net's architecture entry: class name, kwargs, kwargs needing import),
    ``pretrain_plan`` (the plans' identity and the pretraining configuration,
    whose ``patch_size`` is the SSL view size), ``pretrain_num_input_channels``,
    ``recommended_downstream_patchsize`` (the configuration's patch size),
    ``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj`` and ``key_to_lpe``.
    The keys are those the architecture declares, prefixed with ``weights_prefix``
    because this checkpoint's ``network_weights`` hold the teacher and student
    (``teacher.encoder.stages...``).

    Example:
        >>> plan = nnssl_adaptation_plan(plans, "3d_fullres", 1, (16, 32, 32))  # doctest: +SKIP
        >>> plan["key_to_encoder"]  # doctest: +SKIP
        'teacher.encoder.stages'
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = _plain(plans)
    plans.pop("continue_training", None)
    manager = PlansManager(plans)
    cm = manager.get_configuration(configuration)
    cfg = cm.configuration
    arch_kwargs = _plain(cm.network_arch_init_kwargs)
    req_import = tuple(cm.network_arch_init_kwargs_req_import)
    encoder, stem, in_proj = _network_keys(cm.network_arch_class_name, json.dumps(arch_kwargs, sort_keys=True),
                                           req_import, int(num_input_channels))
    return _plain({
        "architecture_plans": {
            "arch_class_name": cm.network_arch_class_name,
            "arch_kwargs": arch_kwargs,
            "arch_kwargs_requiring_import": list(req_import),
        },
        "pretrain_plan": {
            "dataset_name": manager.dataset_name,
            "plans_name": manager.plans_name,
            "original_median_spacing_after_transp": plans.get("original_median_spacing_after_transp"),
            "image_reader_writer": plans.get("image_reader_writer"),
            "transpose_forward": plans.get("transpose_forward"),
            "transpose_backward": plans.get("transpose_backward"),
            "experiment_planner_used": plans.get("experiment_planner_used"),
            "configurations": {configuration: {
                "data_identifier": cfg.get("data_identifier"),
                "preprocessor_name": cfg.get("preprocessor_name"),
                "spacing_style": "median",  # nnU-Net plans a dataset's median-derived target spacing
                "normalization_schemes": cfg.get("normalization_schemes"),
                "use_mask_for_norm": cfg.get("use_mask_for_norm"),
                "resampling_fn_data": cfg.get("resampling_fn_data"),
                "resampling_fn_data_kwargs": cfg.get("resampling_fn_data_kwargs"),
                "resampling_fn_mask": cfg.get("resampling_fn_seg"),
                "resampling_fn_mask_kwargs": cfg.get("resampling_fn_seg_kwargs"),
                "spacing": cfg.get("spacing"),
                "patch_size": [int(v) for v in pretrain_patch_size],
            }},
        },
        "pretrain_num_input_channels": int(num_input_channels),
        "recommended_downstream_patchsize": [int(v) for v in cm.patch_size],
        "key_to_encoder": weights_prefix + encoder,
        "key_to_stem": weights_prefix + stem,
        "keys_to_in_proj": [weights_prefix + k for k in in_proj],
        "key_to_lpe": None,
    })


def check_adaptation_plan(plan: Any) -> Optional[str]:
    """What is wrong with an ``nnssl_adaptation_plan`` entry, or ``None`` when it holds every field."""
    if not isinstance(plan, dict):
        return f"{ADAPTATION_PLAN_KEY} is not a dict"
    missing = [k for k in ADAPTATION_PLAN_FIELDS if k not in plan and k != "key_to_lpe"]
    if missing:
        return f"{ADAPTATION_PLAN_KEY} lacks {missing}"
    for k in ("key_to_encoder", "key_to_stem"):
        if not isinstance(plan[k], str) or not plan[k]:
            return f"{ADAPTATION_PLAN_KEY}[{k!r}] must be a module path, got {plan[k]!r}"
    return None
