"""Ensembles of several runs' predictions: majority vote of label maps, or nnU-Net's probability average.

The seed paper trains each experiment three times with different random
initialisations and combines the three models' predictions by a per-voxel
majority vote. nnU-Net's own ensembling averages the softmax probabilities that
``nnUNetv2_predict --save_probabilities`` stores as ``.npz`` (with a ``.pkl`` of
image properties); :func:`ensemble_folders` reuses nnU-Net's code for that.

Both write standard prediction files: one label map per case, with the input
files' names, format and geometry (spacing, origin, direction), written by the
reader/writer named in the plans; plus ``dataset.json`` (as nnU-Net's
ensembling does) and ``plans.json`` copied from the first run, so the output
folder can be evaluated or ensembled again.

Ties in the majority vote: the label with the most votes wins; among labels
with equally many votes the lowest label wins. With lesion masks (0 background,
1 lesion) this means a tie goes to the background, e.g. with an even number of
runs split half and half; with three runs a tie only happens when three
different labels meet (multi-class), and the lowest of them wins.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from nnunet_ssl.errors import UserError

METHODS = ("majority", "average")


@dataclass(frozen=True)
class EnsembleReport:
    """What the ensembling did."""

    output: Path
    method: str
    n_runs: int
    cases: List[str]


def majority_vote(label_maps: Sequence[np.ndarray]) -> np.ndarray:
    """Per-voxel majority of integer label maps of one shape; ties go to the lowest tied label.

    Example:
        >>> majority_vote([np.array([0, 1, 1, 2]), np.array([1, 1, 0, 2]), np.array([1, 0, 2, 0])])
        array([1, 1, 0, 2])
    """
    if len(label_maps) < 1:
        raise ValueError("no label maps to vote on")
    shape = np.shape(label_maps[0])
    if any(np.shape(m) != shape for m in label_maps):
        raise ValueError(f"label maps differ in shape: {[np.shape(m) for m in label_maps]}")
    labels = np.unique(np.concatenate([np.unique(m) for m in label_maps]))
    counts = np.zeros((len(labels),) + tuple(shape), dtype=np.uint8 if len(label_maps) < 256 else np.uint32)
    for m in label_maps:
        for i, label in enumerate(labels):
            counts[i] += m == label
    # argmax returns the first maximum: labels are sorted, so the lowest tied label wins
    return labels[np.argmax(counts, axis=0)].astype(np.result_type(*[np.asarray(m).dtype for m in label_maps]))


# ---------------------------------------------------------------- folders
def _same(a: Any, b: Any) -> bool:
    """Equal geometry entries: numbers and arrays to a small tolerance, containers recursively."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    try:
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    except (TypeError, ValueError):
        return a == b
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-5, atol=1e-5))


# image-property entries that describe where the voxels lie (reader/writer specific sub-dicts included)
GEOMETRY_KEYS = ("spacing", "sitk_stuff", "nibabel_stuff", "shape_before_cropping", "bbox_used_for_cropping",
                 "shape_after_cropping_and_before_resampling")


def _geometry(properties: dict) -> dict:
    return {k: properties[k] for k in GEOMETRY_KEYS if k in properties}


def _load_json(path: Path) -> Optional[dict]:
    import json

    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _cases(folders: Sequence[Path], ending: str) -> List[str]:
    """Case file names (with ``ending``) present in every folder; a clear error when the sets differ."""
    sets = [{p.name for p in f.iterdir() if p.is_file() and p.name.endswith(ending)} for f in folders]
    union = set().union(*sets)
    for folder, names in zip(folders, sets):
        missing = sorted(union - names)
        if missing:
            raise UserError(f"{folder} lacks {len(missing)} case(s) that other runs have ({', '.join(missing[:5])}"
                            f"{', ...' if len(missing) > 5 else ''}); ensembles need the same cases in every run")
    if not union:
        raise UserError(f"no '*{ending}' files in {folders[0]}; give folders written by nnUNetv2_predict"
                        + (" --save_probabilities" if ending == ".npz" else "") + " (or set the file ending)")
    return sorted(union)


def _reader_writer(plans: Optional[dict], file_ending: str, example: Path):
    if plans is not None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(plans).image_reader_writer_class()  # a property: the class; called: an instance
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    return determine_reader_writer_from_file_ending(file_ending, str(example), True, False)()


def _unreadable(path: Path, error: BaseException) -> UserError:
    """The error for a file that a reader could not parse (truncated, empty, not that format)."""
    reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return UserError(f"cannot read {path}: {reason}; the file is damaged or not a prediction (re-run "
                     "nnUNetv2_predict for that case)")


def _vote_case(name: str, folders: Sequence[Path], output: Path, rw) -> None:
    maps, first_props = [], None
    from nnunet_ssl.ct.io import CaseError, check_image_file

    for folder in folders:
        try:
            check_image_file(folder / name)  # nnU-Net's reader would fill a truncated file with zeros
        except CaseError as e:
            raise UserError(f"{folder}: {e}") from None
        try:
            seg, props = rw.read_seg(str(folder / name))
        except Exception as e:  # readers raise RuntimeError (SimpleITK), ImageFileError (nibabel), OSError...
            raise _unreadable(folder / name, e) from None
        if first_props is None:
            first_props, first_shape = props, seg.shape
        elif seg.shape != first_shape or not _same(_geometry(props), _geometry(first_props)):
            raise UserError(f"{name}: the geometry in {folder} (shape {seg.shape[1:]}, {_geometry(props)}) differs "
                            f"from {folders[0]} (shape {first_shape[1:]}, {_geometry(first_props)}); only "
                            "predictions of the same images can be ensembled")
        if not np.issubdtype(seg.dtype, np.integer) and not np.array_equal(seg, np.round(seg)):
            raise UserError(f"{folder / name} holds non-integer values (probabilities?); a vote needs label maps")
        maps.append(seg.astype(np.int32))
    rw.write_seg(majority_vote(maps)[0], str(output / name), first_props)


def _average_case(npz_name: str, folders: Sequence[Path], output: Path, file_ending: str, rw,
                  label_manager, save_probabilities: bool) -> None:
    from batchgenerators.utilities.file_and_folder_operations import load_pickle
    from nnunetv2.ensembling.ensemble import merge_files

    stem = npz_name[:-len(".npz")]
    first = None
    for folder in folders:
        pkl = folder / (stem + ".pkl")
        if not pkl.is_file():
            raise UserError(f"{pkl} is missing; nnUNetv2_predict --save_probabilities writes one beside each .npz")
        try:
            geometry = _geometry(load_pickle(str(pkl)))
        except Exception as e:  # UnpicklingError, EOFError, ...
            raise _unreadable(pkl, e) from None
        try:
            with np.load(folder / npz_name) as archive:  # the index is at the end: a truncated file fails here
                if "probabilities" not in archive.files:
                    raise ValueError("no 'probabilities' array in it")
        except Exception as e:  # BadZipFile, ValueError, OSError
            raise _unreadable(folder / npz_name, e) from None
        if first is None:
            first = geometry
        elif not _same(geometry, first):
            raise UserError(f"{stem}: the geometry in {folder} ({geometry}) differs from {folders[0]} ({first}); "
                            "only predictions of the same images can be ensembled")
    try:
        merge_files([str(f / npz_name) for f in folders], str(output / stem), file_ending, rw, label_manager,
                    save_probabilities)
    except ValueError as e:  # probability arrays that do not broadcast
        raise UserError(f"{stem}: the runs' probability arrays differ in shape ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # damaged inside, past the index
        raise UserError(f"cannot read the probabilities of {stem}: {e}; re-run nnUNetv2_predict for that case") \
            from None


def _check_output(output: Path, inputs: Sequence[Path], force: bool) -> None:
    """Refuse an output that is a file, holds something (unless ``force``) or holds an input."""
    if output.exists() and not output.is_dir():
        raise UserError(f"the output {output} is a file; give a folder")
    if output.is_dir() and any(output.iterdir()):
        if not force:
            raise UserError(f"the output folder {output} is not empty (another run's predictions?); choose "
                            "another or pass --force to replace its whole content")
        inside = [f for f in inputs if output.resolve() in f.resolve().parents]
        if inside:
            raise UserError(f"the input {inside[0]} lies inside the output folder {output}; --force would delete "
                            "it: choose another output folder")


def _publish(staging: Path, output: Path) -> None:
    """Put the finished staging folder in place of ``output`` (its earlier content removed)."""
    if output.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
        os.replace(output, old / output.name)
        os.replace(staging, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output)


def ensemble_folders(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, method: str = "majority",
                     file_ending: Optional[str] = None, save_probabilities: bool = False,
                     num_processes: int = 1, force: bool = False) -> EnsembleReport:
    """Combine the predictions of several runs, case by case, into ``output``.

    Args:
        inputs: Prediction folders of the runs (``nnUNetv2_predict -o``), at least two.
        output: Folder for the ensemble (created; must not be one of ``inputs``).
        method: ``"majority"`` (per-voxel vote of the label maps, the seed paper's)
            or ``"average"`` (mean of the ``.npz`` probabilities, nnU-Net's).
        file_ending: Label-map ending; default: ``file_ending`` of the first run's ``dataset.json``.
        save_probabilities: With ``average``, also write the mean probabilities (``.npz`` + ``.pkl``).
        num_processes: Cases processed in parallel.
        force: Replace the content of a non-empty ``output`` completely (without it, refused).

    Example:
        >>> ensemble_folders(["pred_seed0", "pred_seed1", "pred_seed2"], "pred_vote")  # doctest: +SKIP
    """
    if method not in METHODS:
        raise UserError(f"unknown ensembling method {method!r}; choose one of {list(METHODS)}")
    folders = [Path(f) for f in inputs]
    if len(folders) < 2:
        raise UserError(f"an ensemble needs the predictions of at least 2 runs, got {len(folders)}")
    for f in folders:
        if not f.is_dir():
            raise UserError(f"prediction folder {f} does not exist")
    resolved = [f.resolve() for f in folders]
    if len(set(resolved)) != len(resolved):
        raise UserError("a prediction folder is given twice; each run must count once")
    output = Path(output)
    if output.resolve() in resolved:
        raise UserError(f"the output folder {output} is one of the inputs; choose another")
    _check_output(output, folders, force)
    if save_probabilities and method != "average":
        raise UserError("--save-probabilities needs --method average (a vote has no probabilities)")
    if num_processes < 1:
        raise UserError(f"the number of processes must be 1 or more, got {num_processes}")

    dataset_json = _load_json(folders[0] / "dataset.json")
    plans = _load_json(folders[0] / "plans.json")
    if file_ending is None:
        if dataset_json is None or "file_ending" not in dataset_json:
            raise UserError(f"{folders[0]} has no dataset.json to tell the file ending; pass it (e.g. -fe .nii.gz)")
        file_ending = dataset_json["file_ending"]

    if method == "majority":
        cases = _cases(folders, file_ending)
        rw = _reader_writer(plans, file_ending, folders[0] / cases[0])
        jobs = [(_vote_case, (c, folders, output, rw)) for c in cases]
    else:
        if plans is None or dataset_json is None:
            raise UserError(f"{folders[0]} needs plans.json and dataset.json (nnUNetv2_predict writes them) to turn "
                            "probabilities into label maps")
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        npz = _cases(folders, ".npz")
        manager = PlansManager(plans)
        rw = manager.image_reader_writer_class()
        label_manager = manager.get_label_manager(dataset_json)
        cases = [c[:-len(".npz")] + file_ending for c in npz]
        jobs = [(_average_case, (c, folders, output, file_ending, rw, label_manager, save_probabilities))
                for c in npz]

    # write into a staging folder beside the output, so that a refusal half-way leaves nothing behind
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    except OSError as e:
        raise UserError(f"cannot write the output folder {output}: {e.strerror or e}") from None
    try:
        jobs = [(fn, tuple(staging if a is output else a for a in args)) for fn, args in jobs]
        if num_processes == 1:
            for fn, args in jobs:
                fn(*args)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(num_processes, mp_context=multiprocessing.get_context("spawn")) as pool:
                for future in [pool.submit(fn, *args) for fn, args in jobs]:
                    future.result()
        for name in ("dataset.json", "plans.json"):
            if (folders[0] / name).is_file():
                shutil.copyfile(folders[0] / name, staging / name)
        _publish(staging, output)
    except OSError as e:
        raise UserError(f"cannot write the output folder {output}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return EnsembleReport(output, method, len(folders), cases)
