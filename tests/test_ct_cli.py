"""`nnunet-ssl preprocess-ct` run for real in a subprocess: outputs, report, resuming."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.ct.resample import resample_like
from nnunet_ssl.phantom import make_stroke_phantom, write_image


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no external skull strippers
    return subprocess.run([sys.executable, "-m", "nnunet_ssl.cli.main", "preprocess-ct", *args],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout, env=env)


def read_report(folder: Path) -> dict[str, dict]:
    with open(folder / "preprocess_report.csv", newline="", encoding="utf-8") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for i, side in enumerate(["left", "right"]):
        ph = make_stroke_phantom(shape=(48, 64, 64), spacing=(3.0, 3.0, 3.0), side=side, seed=10 + i)
        write_image(ph.image, ph.spacing, root / "ct" / f"case{i}_0000.nii.gz")
        write_image(ph.lesion.astype(np.uint8), ph.spacing, root / "labels" / f"case{i}.nii.gz")
    out = root / "Dataset777_NCCT"
    first = cli(str(root / "ct"), str(out), "--channels", "ct+contra", "--labels", str(root / "labels"),
                "--spacing", "2.5", "-j", "2", "--no-progress")
    assert first.returncode == 0, first.stdout + first.stderr
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    second = cli(str(root / "ct"), str(out), "--channels", "ct+contra", "--labels", str(root / "labels"),
                 "--spacing", "2.5", "--no-progress")
    return {"root": root, "out": out, "first": first, "second": second, "stamps": stamps}


def test_cli_writes_an_nnunet_raw_dataset(dataset):
    out = dataset["out"]
    info = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert info["channel_names"] == {"0": "CT", "1": "CT"}
    assert info["labels"] == {"background": 0, "lesion": 1}
    assert info["numTraining"] == 2 and info["file_ending"] == ".nii.gz"
    assert info["name"] == "Dataset777_NCCT"
    for case in ("case0", "case1"):
        ct = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
        contra = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0001.nii.gz"))
        label = sitk.ReadImage(str(out / "labelsTr" / f"{case}.nii.gz"))
        assert ct.GetSpacing() == pytest.approx((2.5, 2.5, 2.5))
        assert ct.GetSize() == contra.GetSize() == label.GetSize()
        arr = sitk.GetArrayViewFromImage(ct)
        assert arr.min() >= -100 and arr.max() <= 400  # clipped
        assert (arr == 0).mean() > 0.3  # skull stripped: background set to 0
        assert (out / "qc" / f"{case}.png").stat().st_size > 5000
    assert "2 processed, 0 skipped" in dataset["first"].stdout
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(out), num_processes=1)  # nnU-Net accepts the folder as it is
    rows = read_report(out)
    assert {r["status"] for r in rows.values()} == {"skipped"}  # the second run's report
    assert float(rows["case0"]["plane_angle_deg"]) < 2.0
    assert float(rows["case0"]["seconds_total"]) > 0


def test_contralateral_channel_shows_the_lesion_on_the_other_side(dataset):
    out, root = dataset["out"], dataset["root"]
    ct = sitk.ReadImage(str(out / "imagesTr" / "case0_0000.nii.gz"), sitk.sitkFloat32)
    contra = sitk.ReadImage(str(out / "imagesTr" / "case0_0001.nii.gz"), sitk.sitkFloat32)
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "case0.nii.gz"))) > 0
    diff = sitk.GetArrayFromImage(ct - contra)
    assert lesion.sum() > 50
    assert diff[lesion].mean() < -4.0  # lesion darker than its healthy mirror
    source = sitk.ReadImage(str(root / "labels" / "case0.nii.gz"))
    assert sitk.GetArrayFromImage(resample_like(source, ct, is_mask=True)).sum() == lesion.sum()


def test_second_run_skips_finished_cases(dataset):
    second = dataset["second"]
    assert second.returncode == 0, second.stderr
    assert "0 processed, 2 skipped" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in dataset["out"].rglob("*.nii.gz")} == dataset["stamps"]


def test_other_settings_on_the_same_folder_are_refused(dataset):
    proc = cli(str(dataset["root"] / "ct"), str(dataset["out"]), "--channels", "ct+diff",
               "--labels", str(dataset["root"] / "labels"), "--spacing", "2.5", "--no-progress")
    assert proc.returncode == 2
    assert "other settings (channels differ)" in proc.stderr and "--overwrite" in proc.stderr


def test_mri_labels_are_propagated_and_bad_cases_listed(tmp_path):
    ph = make_stroke_phantom(shape=(48, 64, 64), spacing=(3.0, 3.0, 3.0), side="left", seed=12)
    write_image(ph.image, ph.spacing, tmp_path / "ct" / "p1.nii.gz")
    mri = 800.0 / (1.0 + np.exp(-np.clip(ph.image - 25.0, -200, 200) / 8.0))
    shift = (6.0, -4.0, 3.0)  # the MRI was acquired with the head elsewhere
    write_image(mri.astype(np.float32), ph.spacing, tmp_path / "mri" / "p1.nii.gz", origin=shift)
    write_image(ph.lesion.astype(np.uint8), ph.spacing, tmp_path / "labels" / "p1.nii.gz", origin=shift)
    write_image(mri.astype(np.float32), ph.spacing, tmp_path / "ct" / "p2.nii.gz")  # an MRI posing as CT
    write_image(mri.astype(np.float32), ph.spacing, tmp_path / "mri" / "p2.nii.gz")
    write_image(ph.lesion.astype(np.uint8), ph.spacing, tmp_path / "labels" / "p2.nii.gz")
    out = tmp_path / "out"
    proc = cli(str(tmp_path / "ct"), str(out), "--labels", str(tmp_path / "labels"), "--mri",
               str(tmp_path / "mri"), "--spacing", "3", "--no-qc", "--no-progress")
    assert proc.returncode == 1  # some cases failed
    assert "failed p2: intensities" in proc.stdout
    rows = read_report(out)
    assert rows["p1"]["status"] == "ok" and float(rows["p1"]["label_coverage"]) > 0.9
    assert rows["p2"]["status"] == "failed" and "do not look like CT in HU" in rows["p2"]["reason"]
    moved = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "p1.nii.gz"))) > 0
    assert 2.0 * (moved & ph.lesion).sum() / (moved.sum() + ph.lesion.sum()) > 0.8
    assert not (out / "imagesTr" / "p2_0000.nii.gz").exists()


def test_help_and_bad_options():
    proc = cli("--help", timeout=120)
    assert proc.returncode == 0 and "--channels" in proc.stdout and "ct+contra" in proc.stdout
    proc = cli("a", "b", "--clip", "400,-100", timeout=120)
    assert proc.returncode == 2 and "LOW must be below HIGH" in proc.stderr
