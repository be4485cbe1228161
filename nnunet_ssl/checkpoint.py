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
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "nnunet_ssl.desd/1"
ENCODER_PREFIXES = {"teacher": "teacher.encoder.", "student": "student.encoder."}


def ssl_metadata(settings: dict, configuration_manager, num_input_channels: int,
                 dataset_name: str, plans_name: str, configuration: str) -> dict:
    """The ``ssl`` entry of a checkpoint (see the module docstring)."""
    return {
        "format": FORMAT,
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
        "encoder_prefixes": dict(ENCODER_PREFIXES),
        "target_encoder_key": "encoder",
    }


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
