"""Planning and preprocessing through nnU-Net's own API, with the knobs SSL users need.

nnU-Net looks planners up only inside ``nnunetv2``; this module therefore calls
its planning API directly with a stock planner class, adjusts the planner's
public attributes (base number of features, memory target) before planning, and
records the SSL settings as an ``ssl`` block in the planned configuration. The
plans name only stock classes, so every stock command works on them.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Mapping, Optional, Sequence

from nnunet_ssl.errors import UserError

# name -> (module, class) of stock nnU-Net planners
PLANNERS = {
    "default": ("nnunetv2.experiment_planning.experiment_planners.default_experiment_planner", "ExperimentPlanner"),
    "resenc-m": ("nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners",
                 "nnUNetPlannerResEncM"),
    "resenc-l": ("nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners",
                 "nnUNetPlannerResEncL"),
}


def require_env(*names: str) -> None:
    """Fail with one clear message when nnU-Net's folder variables are missing."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise UserError(f"environment variable(s) {', '.join(missing)} not set; nnU-Net needs them "
                        "(export nnUNet_raw=..., nnUNet_preprocessed=..., nnUNet_results=...)")


@contextlib.contextmanager
def nnunet_errors(dataset: str, folder: str = "nnUNet_preprocessed", checks: bool = True):
    """Turn nnU-Net's refusals of a dataset and failures to write its folders into one :class:`UserError`.

    nnU-Net's integrity check and fingerprinting stop with ``AssertionError``, ``RuntimeError`` or
    ``FileNotFoundError`` and a reason; the reason is kept, the traceback dropped. With ``checks``
    false only failures to write are translated.
    """
    refusals = (AssertionError, RuntimeError, FileNotFoundError) if checks else ()
    try:
        yield
    except refusals as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"nnU-Net's check of {dataset} failed: {reason}. Fix the dataset in nnUNet_raw (see "
                        "nnU-Net's dataset_format.md) or pass --no-verify to skip the check") from None
    except OSError as e:
        raise UserError(f"cannot write {e.filename or os.environ.get(folder, folder)}: {e.strerror or e}; "
                        f"{folder} must be a folder you may write to") from None


def default_plans_identifier(planner: str) -> str:
    """The plans name a :data:`PLANNERS` preset writes by default (its class's ``plans_name`` default)."""
    import importlib
    import inspect

    module, cls_name = PLANNERS[planner]
    cls = getattr(importlib.import_module(module), cls_name)
    return inspect.signature(cls.__init__).parameters["plans_name"].default


def dataset_name(dataset: str | int) -> str:
    """``"3"``, ``3`` or ``"Dataset003_X"`` -> ``"Dataset003_X"``, with a clear error when missing."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"dataset {dataset!r} not found in nnUNet_raw, nnUNet_preprocessed or "
                        f"nnUNet_results ({e})") from None


def plan_and_preprocess(dataset: str | int, planner: str = "default", base_features: Optional[int] = None,
                        gpu_memory_gb: Optional[float] = None, plans_name: Optional[str] = None,
                        configurations: Sequence[str] = ("3d_fullres",),
                        ssl_settings: Optional[Mapping] = None, num_processes: int = 2,
                        verify: bool = True, max_features: Optional[int] = None, force: bool = False) -> str:
    """Fingerprint, plan and preprocess one dataset; return the plans name.

    Args:
        dataset: Dataset id or name in ``nnUNet_raw``.
        planner: A key of :data:`PLANNERS` (nnU-Net's default or residual-encoder presets).
        base_features: Features of the first stage (nnU-Net: 32); doubled per stage up to the cap.
        gpu_memory_gb: Memory target of the planner; smaller gives smaller patches.
        plans_name: Plans identifier (default: the planner's).
        configurations: Configurations to preprocess.
        ssl_settings: SSL settings to record in each configuration's ``ssl`` block
            (validated against :class:`~nnunet_ssl.desd.settings.DeSDSettings`).
        num_processes: Worker processes for fingerprinting and preprocessing.
        verify: Run nnU-Net's dataset integrity check first.
        max_features: Cap on the features per stage (nnU-Net: 320 in 3D, 512 in 2D).
        force: Replace plans of that name (and their ``ssl`` blocks); without it existing plans are refused.

    Raises:
        UserError: existing plans without ``force``; a configuration asked for that nnU-Net did not
            plan for this dataset (the plans are then left as they were); nnU-Net's refusal of the
            dataset, with its reason; a folder that cannot be written.
    """
    import importlib

    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset, plan_experiment_dataset, preprocess_dataset)
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    from nnunet_ssl.desd.settings import DeSDSettings

    require_env("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    if planner not in PLANNERS:
        raise UserError(f"unknown planner {planner!r}; choose one of {sorted(PLANNERS)}")
    if base_features is not None and base_features < 1:
        raise UserError("--base-features must be a positive integer")
    if max_features is not None and max_features < (base_features or 1):
        raise UserError("--max-features must be a positive integer, at least --base-features")
    ssl = dict(ssl_settings or {})
    try:
        DeSDSettings.from_dict(ssl)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
    name = dataset_name(dataset)
    dataset_id = convert_dataset_name_to_id(name)
    path = plans_path(name, plans_name or default_plans_identifier(planner))
    previous = open(path, "rb").read() if os.path.isfile(path) else None
    if previous is not None and not force:
        raise UserError(f"{path} exists (planned before, with its ssl settings); pass --force to replace it, or "
                        "choose another plans name with -p")

    with nnunet_errors(name):
        extract_fingerprint_dataset(dataset_id, num_processes=num_processes, check_dataset_integrity=verify,
                                    clean=True, verbose=False)
    module, cls_name = PLANNERS[planner]
    base_cls = getattr(importlib.import_module(module), cls_name)
    planner_cls = _with_network_size(base_cls, base_features, max_features)
    with nnunet_errors(name), _at_least_one_da_process():
        _, plans_identifier = plan_experiment_dataset(dataset_id, planner_cls, gpu_memory_gb,
                                                      overwrite_plans_name=plans_name)
    _require_configurations(name, plans_identifier, configurations, previous)
    with nnunet_errors(name, checks=False):
        if ssl:
            record_ssl_settings(name, plans_identifier, configurations, ssl)
        preprocess_dataset(dataset_id, plans_identifier, list(configurations),
                           [num_processes] * len(configurations))
    return plans_identifier


def _require_configurations(name: str, plans_identifier: str, configurations: Sequence[str],
                            previous: Optional[bytes]) -> None:
    """Refuse configurations nnU-Net did not plan (it would skip them, and the SSL settings with them).

    nnU-Net plans ``3d_fullres`` only for 3D data and ``3d_lowres`` only for large images; the plans
    just written are put back as they were before the refusal.
    """
    path = plans_path(name, plans_identifier)
    with open(path, encoding="utf-8") as f:
        planned = list(json.load(f)["configurations"])
    missing = [c for c in configurations if c not in planned]
    if not missing:
        return
    if previous is None:
        os.remove(path)
    else:
        with open(path, "wb") as f:
            f.write(previous)
    raise UserError(f"nnU-Net planned no {', '.join(missing)} configuration for {name} (it planned "
                    f"{', '.join(planned)}); nothing was preprocessed. Pass -c with one of those (for 2d, an "
                    "SSL view_size with two axes, e.g. --ssl 'view_size=[112,112]')")


def _with_network_size(base_cls, base_features: Optional[int], max_features: Optional[int] = None):
    """A subclass of a stock planner whose U-Net starts with ``base_features`` features, capped at
    ``max_features``. The plans still name only stock classes: the subclass changes numbers, not code."""
    if base_features is None and max_features is None:
        return base_cls

    class _Planner(base_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if base_features is not None:
                # nnU-Net's memory model scales with the reference feature count; keep them consistent
                self.UNet_base_num_features = base_features
                self.UNet_reference_com_nfeatures = base_features
            if max_features is not None:
                self.UNet_max_features_3d = max_features
                self.UNet_max_features_2d = max_features

    _Planner.__name__ = base_cls.__name__
    return _Planner


@contextlib.contextmanager
def _at_least_one_da_process():
    """nnU-Net's planner calls ``torch.set_num_threads(nnUNet_n_proc_DA)``, which fails for 0
    (a valid setting for training without worker processes); plan with 1 in that case."""
    value = os.environ.get("nnUNet_n_proc_DA")
    if value is not None and value.strip() == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        if value is not None:
            os.environ["nnUNet_n_proc_DA"] = value


def plans_path(name: str, plans_identifier: str) -> str:
    return os.path.join(os.environ["nnUNet_preprocessed"], name, plans_identifier + ".json")


def record_ssl_settings(name: str, plans_identifier: str, configurations: Sequence[str], ssl: Mapping) -> None:
    """Write ``ssl`` blocks into the plans file (stock nnU-Net ignores the unknown key)."""
    path = plans_path(name, plans_identifier)
    with open(path, encoding="utf-8") as f:
        plans = json.load(f)
    for c in configurations:
        if c in plans["configurations"]:
            block = dict(ssl)
            view = block.get("view_size")
            if view is not None and len(view) == 3 and len(plans["configurations"][c].get("patch_size", ())) == 2:
                block["view_size"] = list(view[-2:])  # slices as samples: the in-plane part of the view
            plans["configurations"][c]["ssl"] = block
    with open(path, "w", encoding="utf-8") as f:
        json.dump(plans, f, indent=4, sort_keys=False)


def parse_settings(pairs: Sequence[str]) -> dict:
    """``["out_dim=4096", "view_size=[16,64,64]"]`` -> dict; values are JSON (bare strings allowed)."""
    result = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise UserError(f"expected NAME=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            result[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            result[key.strip()] = value
    return result
