"""Running the NCCT pipeline over a folder and writing an nnU-Net raw dataset.

Output layout (``OUTPUT_DIR`` is meant to be ``$nnUNet_raw/DatasetXXX_Name``)::

    imagesTr/CASE_0000.nii.gz        CT, 1 mm, clipped, skull stripped
    imagesTr/CASE_0001.nii.gz        difference or contralateral image (2-channel sets)
    labelsTr/CASE.nii.gz             lesion mask (when labels are given) or brain mask (brain_label)
    dataset.json                     channel_names, labels, numTraining, file_ending
    qc/CASE.png                      quality-control picture
    meta/CASE.json                   per-case numbers and the settings' digest; written last, marks the case done
    preprocess_report.csv            one row per case: status, reason, timings, metrics
    preprocess_config.json           the settings the folder was made with (marks the folder as this command's)

A case whose outputs exist and whose ``meta`` file records the current settings is
skipped on the next run, so an interrupted run picks up where it stopped. A folder
that this command did not make is refused; ``--overwrite`` first removes the entries
above (:data:`OUTPUT_ENTRIES`, folders with all they hold), so they hold exactly the
new outputs, and keeps anything else in the folder. Outputs are never deleted without
it. The input folders are only read.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import SimpleITK as sitk

from nnunet_ssl.ct.folders import read_json, remove_entries, writable_folder, write_json
from nnunet_ssl.ct.io import CaseError, find_cases, write_image
from nnunet_ssl.ct.pipeline import PreprocessConfig, preprocess_case
from nnunet_ssl.errors import UserError

FILE_ENDING = ".nii.gz"
IMAGES_DIR, LABELS_DIR, DATASET_JSON = "imagesTr", "labelsTr", "dataset.json"
QC_DIR, META_DIR = "qc", "meta"
REPORT_NAME = "preprocess_report.csv"
CONFIG_NAME = "preprocess_config.json"
# every entry this command writes into OUTPUT_DIR; --overwrite removes exactly these
OUTPUT_ENTRIES = (IMAGES_DIR, LABELS_DIR, DATASET_JSON, QC_DIR, META_DIR, REPORT_NAME, CONFIG_NAME)
REPORT_COLUMNS = [
    "case", "status", "reason", "seconds_total", "seconds_read", "seconds_resample",
    "seconds_brain_mask", "seconds_contralateral", "seconds_labels", "seconds_write",
    "brain_method", "brain_volume_ml", "registration_similarity", "registration_metric",
    "plane_angle_deg", "plane_distance_mm", "plane_residual_deg", "plane_normal", "plane_offset_mm",
    "label_metric", "label_coverage", "input_size", "input_spacing", "input_orientation",
]


def case_outputs(out_dir: Path, case: str, config: PreprocessConfig, labelled: bool) -> list[Path]:
    """Every file a finished case has in ``out_dir`` (the ``meta`` file last)."""
    paths = [out_dir / IMAGES_DIR / f"{case}_{i:04d}{FILE_ENDING}" for i in range(len(config.channel_names))]
    if labelled:
        paths.append(out_dir / LABELS_DIR / f"{case}{FILE_ENDING}")
    if config.qc:
        paths.append(out_dir / QC_DIR / f"{case}.png")
    return paths + [out_dir / META_DIR / f"{case}.json"]


def settings_digest(settings: dict) -> str:
    """A short digest of the settings a case is made with (recorded in its ``meta`` file)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def finished(outputs: list[Path], digest: str) -> dict | None:
    """The ``meta`` record of a case finished with the settings of ``digest``, else ``None``.

    A case made with other settings (an interrupted ``--overwrite``), one with a file
    missing, or one whose ``meta`` file was cut short counts as not done.
    """
    if not all(p.exists() for p in outputs):
        return None
    meta = read_json(outputs[-1])
    return meta if meta is not None and meta.get("settings_sha256") == digest else None


def _remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def process_one(case: str, ct: Path, label: Path | None, mri: Path | None, out_dir: Path,
                config: PreprocessConfig, threads: int = 0, brain_label: bool = False, digest: str = "") -> dict:
    """Process and write one case; never raises for a bad case (returns its report row)."""
    if threads:
        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(threads)
    start = time.perf_counter()
    outputs = case_outputs(out_dir, case, config, label is not None or brain_label)
    row: dict = {"case": case}
    try:
        res = preprocess_case(ct, config, label=label, mri=mri)
        row.update(res.info)
        t = time.perf_counter()
        for img, path in zip(res.channels, outputs):
            pixel = sitk.sitkFloat32 if img is res.difference else sitk.sitkInt16
            write_image(sitk.Round(img) if pixel == sitk.sitkInt16 else img, path, pixel)
        if res.label is not None or brain_label:
            label_img = res.brain if brain_label else res.label
            write_image(label_img, out_dir / LABELS_DIR / f"{case}{FILE_ENDING}", sitk.sitkUInt8)
        if config.qc:
            from nnunet_ssl.ct.qc import save_qc_png

            sym = res.symmetry
            title = case if sym is None else f"{case}  plane {sym.angle_deg:.1f} deg, similarity {sym.similarity:.2f}"
            save_qc_png(out_dir / QC_DIR / f"{case}.png", res.ct, res.brain, res.contralateral,
                        res.difference, (sym.normal, sym.offset) if sym else None, title)
        row["seconds_write"] = round(time.perf_counter() - t, 3)
        row.update(status="ok", reason="")
    except CaseError as e:
        row.update(getattr(e, "info", {}), status="failed", reason=str(e))
    except Exception as e:  # noqa: BLE001 - one broken case must not stop a long run
        last = traceback.extract_tb(e.__traceback__)[-1]
        row.update(status="failed", reason=f"internal error {type(e).__name__}: {e} "
                                           f"({Path(last.filename).name}:{last.lineno})")
    row["seconds_total"] = round(time.perf_counter() - start, 3)
    if row["status"] == "ok":
        meta = {k: v for k, v in row.items() if k not in ("status", "reason")}
        write_json(outputs[-1], {**meta, "settings_sha256": digest})
    else:
        _remove(outputs)  # leave no half-written case behind for nnU-Net to find
    return row


def _check_folders(input_dir: Path, output_dir: Path, others: list[Path]) -> None:
    out = output_dir.resolve()
    for folder in [input_dir, *others]:
        src = folder.resolve()
        if out == src or src in out.parents or out in src.parents:
            raise UserError(f"output folder {output_dir} overlaps input folder {folder}; "
                            "choose an output folder outside the inputs (inputs are never modified)")


def _check_output(output_dir: Path, settings: dict, overwrite: bool) -> None:
    """Refuse an output folder this command cannot resume: not its own, or other settings."""
    writable_folder(output_dir)
    if overwrite:
        return
    path = output_dir / CONFIG_NAME
    if path.exists():
        old = read_json(path)
        if old is None:
            raise UserError(f"{path} cannot be read (cut short?), so it is unknown how {output_dir} was made; "
                            "use --overwrite to redo the folder")
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise UserError(f"{output_dir} was made with other settings ({', '.join(changed)} differ); "
                            "use --overwrite to redo it, or another output folder")
    elif any(not e.name.startswith(".") for e in output_dir.iterdir()):
        raise UserError(f"{output_dir} is not empty and was not made by preprocess-ct (no {CONFIG_NAME}); "
                        "choose a new or empty folder, or pass --overwrite to replace the entries "
                        f"preprocess-ct writes ({', '.join(OUTPUT_ENTRIES)}; other files are kept)")


def run_dataset(input_dir: Path | str, output_dir: Path | str, config: PreprocessConfig = PreprocessConfig(),
                labels_dir: Path | str | None = None, mri_dir: Path | str | None = None, jobs: int = 1,
                overwrite: bool = False, progress: bool = True, dataset_name: str | None = None,
                brain_label: bool = False) -> list[dict]:
    """Preprocess every case of ``input_dir`` into an nnU-Net raw dataset in ``output_dir``.

    Args:
        input_dir: One CT per case (NIfTI/NRRD/MetaImage file or DICOM folder).
        output_dir: Dataset folder to write (created; must not overlap the inputs).
        config: Pipeline settings.
        labels_dir: Lesion masks matched by case id (CT space, or MRI space with ``mri_dir``).
        mri_dir: Paired MRIs matched by case id; labels are then propagated from them.
        jobs: Cases processed in parallel (separate processes).
        overwrite: Remove this command's entries of ``output_dir`` first
            (:data:`OUTPUT_ENTRIES`; anything else there is kept) and redo every case;
            without it a folder made by this command with the same settings is resumed,
            anything else is refused.
        progress: Show a progress bar.
        dataset_name: ``name`` in ``dataset.json`` (default: the output folder's name).
        brain_label: Write each case's brain mask as its label (1 = brain), for
            unlabelled SSL datasets: nnU-Net takes the CT normalisation statistics from
            the label's foreground. Not with ``labels_dir``.

    Returns:
        The report rows (also written to ``preprocess_report.csv``).

    Example:
        >>> rows = run_dataset("raw_ct", "nnUNet_raw/Dataset501_NCCT",
        ...                    PreprocessConfig(channels="ct+diff"), jobs=4)  # doctest: +SKIP
        >>> sum(r["status"] == "failed" for r in rows)  # doctest: +SKIP
        0
    """
    from tqdm import tqdm

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if mri_dir is not None and labels_dir is None:
        raise UserError("--mri needs --labels: the lesion masks drawn on those MRIs")
    if brain_label and labels_dir is not None:
        raise UserError("--brain-label writes brain masks as labels; it cannot be combined with --labels")
    others = [Path(p) for p in (labels_dir, mri_dir) if p is not None]
    _check_folders(input_dir, output_dir, others)
    cases = find_cases(input_dir, "input")
    labels = find_cases(labels_dir, "labels") if labels_dir is not None else None
    mris = find_cases(mri_dir, "MRI") if mri_dir is not None else None
    settings = {**config.to_dict(), "labels": labels is not None, "mri": mris is not None,
                "brain_label": brain_label}
    labelled = labels is not None or brain_label
    digest = settings_digest(settings)
    _check_output(output_dir, settings, overwrite)
    missing = {case: [n for n, d in (("label", labels), ("MRI", mris)) if d is not None and case not in d]
               for case in cases}
    kept = [c for c, m in missing.items() if m and any(p.exists() for p in case_outputs(output_dir, c, config,
                                                                                          labelled))]
    if kept and not overwrite:
        raise UserError(f"{len(kept)} case(s) with outputs in {output_dir} have no {missing[kept[0]][0]} file "
                        f"now ({', '.join(kept[:5])}); restore it, or pass --overwrite to redo the folder "
                        "without them (outputs are never deleted without it)")
    if overwrite:
        # whole entries, so no file of the earlier run survives in them (an old _0001 channel)
        foreign = remove_entries(output_dir, OUTPUT_ENTRIES)
        if foreign:
            print(f"kept {len(foreign)} {'entry' if len(foreign) == 1 else 'entries'} not written by "
                  f"preprocess-ct in {output_dir}: "
                  f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}")
    write_json(output_dir / CONFIG_NAME, settings)

    rows, tasks = [], []
    for case, ct in cases.items():
        done = case_outputs(output_dir, case, config, labelled)
        meta = finished(done, digest)
        if missing[case]:
            rows.append({"case": case, "status": "failed",
                         "reason": f"no {' and no '.join(missing[case])} file with this case id"})
        elif meta is not None:
            rows.append({**meta, "status": "skipped", "reason": "outputs exist (use --overwrite to redo)"})
        else:
            tasks.append((case, ct, labels[case] if labels else None, mris[case] if mris else None))

    jobs = max(1, min(int(jobs), len(tasks) or 1))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    bar = tqdm(total=len(tasks), desc="preprocess-ct", unit="case", disable=not progress or not tasks)
    if jobs == 1:
        for task in tasks:
            rows.append(process_one(*task, output_dir, config, 0, brain_label, digest))
            bar.update()
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(process_one, *task, output_dir, config, threads, brain_label, digest)
                       for task in tasks]
            for fut in as_completed(futures):
                rows.append(fut.result())
                bar.update()
    bar.close()

    rows.sort(key=lambda r: r["case"])
    write_report(output_dir / REPORT_NAME, rows)
    write_dataset_json(output_dir, config, rows, "brain" if brain_label else ("lesion" if labels else None),
                       dataset_name or output_dir.name)
    return rows


def write_report(path: Path, rows: list[dict]) -> None:
    """Write the per-case CSV report (columns :data:`REPORT_COLUMNS`)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in REPORT_COLUMNS})


def write_dataset_json(output_dir: Path, config: PreprocessConfig, rows: list[dict], label_name: str | None,
                       name: str) -> dict:
    """Write nnU-Net v2's ``dataset.json`` for the cases that are done.

    ``label_name`` names label 1 (``"lesion"``, ``"brain"``), or ``None`` without labels.
    """
    done = [r for r in rows if r["status"] in ("ok", "skipped")]
    # every value 0..max_label, so that the labels are consecutive as nnU-Net requires
    labels = {"background": 0, label_name or "lesion": 1}
    if label_name != "brain":
        labels.update({f"label_{v}": v for v in range(2, config.max_label + 1)})
    info = {
        "channel_names": {str(i): n for i, n in enumerate(config.channel_names)},
        "labels": labels,
        "numTraining": len(done),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": f"NCCT preprocessed by nnunet-ssl preprocess-ct (channels {config.channels}, "
                       f"spacing {list(config.spacing)} mm, clip {list(config.clip)} HU)"
                       + ("" if label_name else "; no labels (imagesTr only)"),
    }
    (output_dir / DATASET_JSON).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info
