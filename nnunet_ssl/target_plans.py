"""Plans for the labelled target dataset that fit an encoder pretrained on the SSL dataset.

Pretrained weights only help when the target network's encoder has the SSL
encoder's topology and sees inputs normalised the same way. The target plans are
therefore derived from the SSL plans (nnU-Net's own
``move_plans_between_datasets`` copies them over), and then adapted to the target
data where that changes nothing the encoder depends on:

kept from the SSL plans
    architecture (class, stages, features, kernels, strides, normalisation),
    target spacing, transpose, normalisation schemes, resampling functions and the
    ``foreground_intensity_properties_per_channel`` (the SSL dataset's brain
    statistics, so that CT is clipped and z-scored exactly as during pretraining);
recomputed for the target
    ``patch_size`` (covers the target's median shape at that spacing, a multiple of
    the strides' product per axis, and no more memory than the SSL patch),
    ``batch_size`` (the SSL batch scaled by the memory freed, capped at the fraction of
    the dataset that the SSL plans' planner allows: 5 % for nnU-Net's default planner,
    100 % for its residual-encoder presets), ``median_image_size_in_voxels`` and the
    ``original_median_*`` entries;
dropped
    configurations not asked for, and the SSL settings (``ssl`` blocks): they
    describe pretraining, not this dataset. An ``ssl_source`` entry records where
    the plans came from, and ``complete``: ``false`` while preprocessing runs, so
    that plans left by an interrupted run are recognised (``nnunet-ssl-transfer``
    refuses them, rerunning ``plan-target`` resumes).

Every class the plans name is a stock nnU-Net class, so ``nnUNetv2_train``,
``-pretrained_weights`` and ``nnUNetv2_predict`` use them unchanged.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from nnunet_ssl.errors import UserError

# nnU-Net's default planner never lets a batch see more than this fraction of the dataset's voxels
MAX_DATASET_COVERED = 0.05
MIN_BATCH_SIZE = 2


def default_plans_name(ssl_plans: str, ssl_dataset_name: str) -> str:
    """``("nnUNetPlans", "Dataset500_HeadCT")`` -> ``"nnUNetPlans_from_Dataset500"``.

    Distinct from the target's own ``nnUNetPlans`` so that a from-scratch baseline planned
    by nnU-Net and the transfer plans can live side by side.
    """
    return f"{ssl_plans}_from_{ssl_dataset_name.split('_')[0]}"


def stride_product(strides: Sequence[Sequence[int]] | Sequence[int], ndim: int) -> list[int]:
    """Product of the per-stage strides along each axis: what a patch size must be divisible by."""
    prod = [1] * ndim
    for s in strides:
        s = [s] * ndim if isinstance(s, (int, np.integer)) else list(s)
        prod = [p * int(v) for p, v in zip(prod, s)]
    return prod


def fit_patch_size(median_shape: Sequence[float], divisors: Sequence[int], max_patch: Sequence[int],
                   cost: Optional[Callable[[Sequence[int]], float]] = None) -> list[int]:
    """The patch for the target: the median shape rounded up to the divisors, within the SSL budget.

    Starts from the smallest multiple of ``divisors`` that covers ``median_shape`` and, like
    nnU-Net's planner, shrinks the axis that is largest relative to the median shape by one
    divisor until ``cost(patch) <= cost(max_patch)`` (``cost``: the network's feature-map size,
    nnU-Net's memory proxy; default the voxel count).

    Example:
        >>> fit_patch_size([30, 200, 180], [4, 32, 32], [64, 128, 128])
        [32, 192, 160]
    """
    cost = cost or (lambda p: float(np.prod(p, dtype=np.float64)))
    patch = [max(int(d), int(math.ceil(m / d)) * int(d)) for m, d in zip(median_shape, divisors)]
    budget = cost(list(max_patch))
    while cost(patch) > budget:
        ratios = [p / max(m, 1e-6) for p, m in zip(patch, median_shape)]
        for axis in np.argsort(ratios, kind="stable")[::-1]:
            if patch[axis] > divisors[axis]:
                patch[axis] -= int(divisors[axis])
                break
        else:
            break  # every axis at its minimum
    return patch


def median_shape_at_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                            new_spacing: Sequence[float], transpose_forward: Sequence[int]) -> list[float]:
    """Median (over cases) of the shape after resampling, in the plans' transposed axis order.

    ``new_spacing`` is transposed already; for a 2D configuration (two entries) the first
    transposed axis keeps its spacing, as in nnU-Net's preprocessing.
    """
    out = []
    for sp, sh in zip(spacings, shapes):
        sp_t = np.asarray(sp, float)[list(transpose_forward)]
        sh_t = np.asarray(sh, float)[list(transpose_forward)]
        target = np.asarray(list(sp_t[: len(sp_t) - len(new_spacing)]) + list(new_spacing), float)
        out.append(np.round(sh_t * sp_t / target))
    return [float(v) for v in np.median(np.array(out), 0)]


def configuration_closure(plans: Mapping, configurations: Sequence[str]) -> list[str]:
    """The configurations asked for plus those they inherit from."""
    keep: list[str] = []
    for name in configurations:
        while name is not None and name not in keep:
            if name not in plans["configurations"]:
                raise UserError(f"configuration {name!r} not in the SSL plans; available: "
                                f"{sorted(plans['configurations'])}")
            keep.append(name)
            name = plans["configurations"][name].get("inherits_from")
    return keep


def resolved_configuration(plans: Mapping, name: str) -> dict:
    """A configuration with its ``inherits_from`` chain applied (child keys replace the parent's)."""
    conf = plans["configurations"][name]
    if "inherits_from" in conf:
        parent = resolved_configuration(plans, conf["inherits_from"])
        parent.update({k: v for k, v in conf.items() if k != "inherits_from"})
        return parent
    return copy.deepcopy(dict(conf))


def planner_max_dataset_covered(planner_class_name: Optional[str], ssl_dataset: str) -> float:
    """``max_dataset_covered`` of the nnU-Net planner that made the SSL plans (their ``experiment_planner_used``).

    nnU-Net's default planner lets a batch cover at most 5 % of the dataset, its residual-encoder
    presets 100 %; the value is set in the planner's constructor, so the planner is built on the
    SSL dataset (which it reads, nothing more). An unknown planner gets nnU-Net's default.
    """
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    if not planner_class_name:
        return MAX_DATASET_COVERED
    cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "experiment_planning"),
                                      planner_class_name, current_module="nnunetv2.experiment_planning")
    if cls is None:
        print(f"Note: planner {planner_class_name} of the SSL plans is not an nnU-Net planner; the batch is capped "
              f"at nnU-Net's default {MAX_DATASET_COVERED} of the dataset")
        return MAX_DATASET_COVERED
    return float(cls(ssl_dataset).max_dataset_covered)


def adapt_plans(plans: Mapping, fingerprint: Mapping, configurations: Sequence[str], n_training: int,
                ssl_dataset_name: str, ssl_plans_name: str, ssl_intensity_properties: Mapping,
                cost_for: Optional[Callable[[dict], Callable[[Sequence[int]], float]]] = None,
                max_dataset_covered: float = MAX_DATASET_COVERED) -> dict:
    """Adapt plans copied from the SSL dataset to the target's fingerprint (see the module docstring).

    Args:
        plans: The SSL plans as copied to the target (dataset and plans names already the target's).
        fingerprint: The target's ``dataset_fingerprint.json``.
        configurations: Configurations to keep (their parents are kept too).
        n_training: Number of training cases of the target (caps the batch size).
        ssl_dataset_name, ssl_plans_name: Recorded in ``ssl_source``.
        ssl_intensity_properties: The SSL plans' ``foreground_intensity_properties_per_channel``.
        cost_for: ``cost_for(configuration) -> cost(patch)``, the memory proxy of that configuration's
            network (default: voxel count).
        max_dataset_covered: Largest fraction of the dataset's voxels one batch may cover (the SSL
            plans' planner's value, :func:`planner_max_dataset_covered`).

    Returns:
        New plans (the input is not modified).
    """
    plans = copy.deepcopy(dict(plans))
    keep = configuration_closure(plans, configurations)
    plans["configurations"] = {k: v for k, v in plans["configurations"].items() if k in keep}
    tf = plans["transpose_forward"]
    spacings, shapes = fingerprint["spacings"], fingerprint["shapes_after_crop"]
    report = {}
    for name in keep:
        raw = plans["configurations"][name]
        raw.pop("ssl", None)
        conf = resolved_configuration(plans, name)
        if "patch_size" not in conf or "architecture" not in conf:
            continue
        spacing = conf["spacing"]
        median = median_shape_at_spacing(spacings, shapes, spacing, tf)[-len(spacing):]
        divisors = stride_product(conf["architecture"]["arch_kwargs"]["strides"], len(spacing))
        cost = cost_for(conf) if cost_for else None
        patch = fit_patch_size(median, divisors, conf["patch_size"], cost)
        cost = cost or (lambda p: float(np.prod(p, dtype=np.float64)))
        batch = int(conf["batch_size"] * cost(conf["patch_size"]) // max(cost(patch), 1.0))
        n_vox = float(np.prod(median, dtype=np.float64)) * n_training
        batch = max(min(batch, round(n_vox * max_dataset_covered / float(np.prod(patch, dtype=np.float64)))),
                    MIN_BATCH_SIZE)
        raw["patch_size"] = [int(p) for p in patch]
        raw["batch_size"] = int(batch)
        raw["median_image_size_in_voxels"] = [float(m) for m in median]
        report[name] = {"patch_size": raw["patch_size"], "batch_size": raw["batch_size"],
                        "ssl_patch_size": [int(p) for p in conf["patch_size"]]}
    plans["original_median_spacing_after_transp"] = [float(v) for v in np.median(spacings, 0)[tf]]
    plans["original_median_shape_after_transp"] = [int(round(v)) for v in np.median(shapes, 0)[tf]]
    plans["foreground_intensity_properties_per_channel"] = copy.deepcopy(dict(ssl_intensity_properties))
    plans["ssl_source"] = {
        "dataset_name": ssl_dataset_name, "plans_name": ssl_plans_name, "configurations": report,
        "max_dataset_covered": max_dataset_covered,
        "note": "architecture, spacing, transpose, normalisation and intensity statistics come from the SSL "
                "plans; patch and batch size were fitted to this dataset",
    }
    return plans


def incomplete_plans_problem(plans: Mapping, plans_file: str | os.PathLike) -> Optional[str]:
    """Why plans written by :func:`plan_target` cannot be used yet, or ``None``.

    ``plan_target`` marks its plans ``ssl_source.complete = false`` until preprocessing has
    finished, so that an interrupted run is recognised rather than trusted with missing cases.
    """
    source = plans.get("ssl_source")
    if isinstance(source, Mapping) and source.get("complete") is False:
        return (f"{plans_file} are incomplete: `nnunet-ssl plan-target` was interrupted before preprocessing "
                f"finished; rerun `nnunet-ssl plan-target -d {plans.get('dataset_name')} --from "
                f"{source.get('dataset_name')} -tp {plans.get('plans_name')}` (it resumes without --force)")
    return None


@dataclass(frozen=True)
class TargetPlansResult:
    """What :func:`plan_target` wrote."""

    plans_name: str
    plans_file: Path
    configurations: dict


def _available_plans(folder: Path) -> list[str]:
    names = []
    for p in sorted(folder.glob("*.json")):
        try:
            if "configurations" in json.loads(p.read_text(encoding="utf-8")):
                names.append(p.stem)
        except (OSError, ValueError):
            continue
    return names


def _channels(dataset_json: Mapping) -> dict:
    return dict(dataset_json.get("channel_names", dataset_json.get("modality", {})))


def _network_cost(n_in: int, n_out: int):
    """``cost_for`` from the network itself: nnU-Net's feature-map size estimate."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    def cost_for(conf: dict):
        arch = conf["architecture"]
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                     arch["_kw_requires_import"], n_in, n_out, allow_init=False)
        if not hasattr(net, "compute_conv_feature_map_size"):
            return None
        return lambda patch: float(net.compute_conv_feature_map_size(list(patch)))

    return cost_for


def plan_target(target: str | int, ssl_dataset: str | int, ssl_plans: str = "nnUNetPlans",
                plans_name: Optional[str] = None, configurations: Sequence[str] = ("3d_fullres",),
                num_processes: int = 2, verify: bool = True, force: bool = False) -> TargetPlansResult:
    """Plan and preprocess the target dataset with the SSL plans' encoder and intensity statistics.

    Args:
        target: Labelled target dataset (id or name) in ``nnUNet_raw``.
        ssl_dataset: The SSL dataset, planned with ``nnunet-ssl plan``.
        ssl_plans: Plans identifier of the SSL dataset.
        plans_name: Identifier of the target plans (default: :func:`default_plans_name`).
        configurations: Configurations to plan and preprocess.
        num_processes: Worker processes for the fingerprint and preprocessing.
        verify: Run nnU-Net's dataset integrity check on the target first.
        force: Replace existing target plans of that name.

    Returns:
        A :class:`TargetPlansResult`.

    Example:
        >>> plan_target(502, 500)  # doctest: +SKIP
        TargetPlansResult(plans_name='nnUNetPlans_from_Dataset500', ...)
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset
    from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import (
        move_plans_between_datasets)
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    from nnunet_ssl.planning import dataset_name, nnunet_errors, require_env

    require_env("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    ssl_name, target_name = dataset_name(ssl_dataset), dataset_name(target)
    if ssl_name == target_name:
        raise UserError("the target and the SSL dataset are the same; --from names the SSL dataset")
    pre = Path(os.environ["nnUNet_preprocessed"])
    ssl_plans_file = pre / ssl_name / f"{ssl_plans}.json"
    if not ssl_plans_file.is_file():
        have = _available_plans(pre / ssl_name) if (pre / ssl_name).is_dir() else []
        raise UserError(f"SSL plans {ssl_plans_file} not found; plan the SSL dataset first (nnunet-ssl plan -d "
                        f"{ssl_name}) or name its plans with -p" + (f" (available: {', '.join(have)})" if have else ""))
    source_plans = load_json(str(ssl_plans_file))
    keep = configuration_closure(source_plans, configurations)
    raw = Path(os.environ["nnUNet_raw"])
    target_json_file = raw / target_name / "dataset.json"
    if not target_json_file.is_file():
        raise UserError(f"{target_json_file} not found; the target must be an nnU-Net raw dataset")
    target_json = load_json(str(target_json_file))
    ssl_json_file = pre / ssl_name / "dataset.json"
    ssl_json = load_json(str(ssl_json_file if ssl_json_file.is_file() else raw / ssl_name / "dataset.json"))
    ssl_ch, target_ch = _channels(ssl_json), _channels(target_json)
    if len(ssl_ch) != len(target_ch):
        raise UserError(f"the target has {len(target_ch)} input channel(s) {list(target_ch.values())} but the SSL "
                        f"plans were made for {len(ssl_ch)} {list(ssl_ch.values())}; the pretrained encoder's first "
                        "layer cannot take them. Give the target the SSL dataset's channels, or pretrain on data "
                        "with the target's channels")
    if list(ssl_ch.values()) != list(target_ch.values()):
        print(f"Note: channel names differ (SSL {list(ssl_ch.values())}, target {list(target_ch.values())}); "
              "the target is normalised with the SSL plans' schemes")
    plans_name = plans_name or default_plans_name(ssl_plans, ssl_name)
    plans_file = pre / target_name / f"{plans_name}.json"
    interrupted = plans_file.is_file() and incomplete_plans_problem(load_json(str(plans_file)), plans_file)
    if plans_file.exists() and not force and not interrupted:
        raise UserError(f"{plans_file} exists; pass --force to replace it, or choose another name with -tp")
    if interrupted:
        print(f"Resuming: {plans_file.name} was left incomplete by an interrupted run; planning and preprocessing "
              "again")

    target_id = convert_dataset_name_to_id(target_name)
    with nnunet_errors(target_name):
        extract_fingerprint_dataset(target_id, num_processes=num_processes, check_dataset_integrity=verify,
                                    clean=True, verbose=False)
    with nnunet_errors(target_name, checks=False):
        # nnU-Net's preprocessing and training read dataset.json from the preprocessed folder
        shutil.copy(target_json_file, pre / target_name / "dataset.json")
        try:
            move_plans_between_datasets(ssl_name, target_name, ssl_plans, plans_name)
        except AssertionError as e:
            raise UserError(f"copying the SSL plans failed: {e}") from None
        moved = load_json(str(plans_file))
        fingerprint = load_json(str(pre / target_name / "dataset_fingerprint.json"))
        n_out = len(target_json["labels"])
        plans = adapt_plans(moved, fingerprint, keep, int(target_json["numTraining"]), ssl_name, ssl_plans,
                            source_plans["foreground_intensity_properties_per_channel"],
                            _network_cost(len(target_ch), n_out),
                            planner_max_dataset_covered(source_plans.get("experiment_planner_used"), ssl_name))
        # preprocessing needs the plans under their name: until it has finished they say they are incomplete
        plans["ssl_source"]["complete"] = False
        save_json(plans, str(plans_file), sort_keys=False)
        preprocess_dataset(target_id, plans_name, list(configurations), [num_processes] * len(configurations))
        plans["ssl_source"]["complete"] = True
        save_json(plans, str(plans_file), sort_keys=False)
    return TargetPlansResult(plans_name, plans_file, plans["ssl_source"]["configurations"])
