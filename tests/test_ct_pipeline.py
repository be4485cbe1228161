"""The per-case pipeline and the dataset runner: geometry, failure reporting, folders."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.ct.dataset import REPORT_NAME, run_dataset
from nnunet_ssl.ct.io import CaseError
from nnunet_ssl.ct.pipeline import PreprocessConfig, check_symmetry, preprocess_case
from nnunet_ssl.ct.synthetic import head_from_brain, move, rigid_motion
from nnunet_ssl.errors import UserError
from nnunet_ssl.phantom import make_stroke_phantom

DATA = Path(__file__).parent / "data"
FAST = dict(spacing=(2.0, 2.0, 2.0), qc=False)


def physical_centroid(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)[:, ::-1].mean(axis=0)  # numpy (z, y, x) -> ITK (x, y, z)
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]))


def rotation_z(deg: float) -> tuple[float, ...]:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


GEOMETRIES = {
    "LPS": dict(spacing=(2.5, 2.5, 2.5), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)),
    "RAS": dict(spacing=(2.5, 2.5, 2.5), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)),
    "5mm-slices": dict(spacing=(2.5, 2.5, 5.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)),
    "oblique-20deg": dict(spacing=(2.5, 2.5, 2.5), direction=rotation_z(20.0)),
}


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def geometry_case(request):
    geo = GEOMETRIES[request.param]
    sx, sy, sz = geo["spacing"]
    nz = 64 if sz == 2.5 else 32  # same head size in mm
    ph = make_stroke_phantom(shape=(nz, 64, 64), spacing=(sz, sy, sx), side="none", noise_hu=1.0, seed=6)
    img = sitk.GetImageFromArray(ph.image)
    img.SetSpacing(geo["spacing"])
    img.SetDirection(geo["direction"])
    img.SetOrigin((-80.0, 95.0, -30.0))
    marker = np.zeros(ph.image.shape, np.uint8)
    marker[nz // 2, 20:23, 40:43] = 1  # a small block inside the left hemisphere
    label = sitk.GetImageFromArray(marker)
    label.CopyInformation(img)
    res = preprocess_case(img, PreprocessConfig(channels="ct+diff", **FAST), label=label)
    return {"name": request.param, "image": img, "brain": ph.brain, "marker": marker, "result": res}


def test_outputs_overlay_the_input_in_physical_space(geometry_case):
    img, res = geometry_case["image"], geometry_case["result"]
    lps = sitk.DICOMOrient(img, "LPS").GetDirection()  # axes permuted/flipped only
    for out in [*res.channels, res.label, res.brain]:
        assert out.GetDirection() == pytest.approx(lps)
        assert out.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    brain_in = physical_centroid(img, geometry_case["brain"])
    brain_out = physical_centroid(res.brain, sitk.GetArrayViewFromImage(res.brain) > 0)
    assert np.linalg.norm(brain_out - brain_in) < 1.0
    ct_out = physical_centroid(res.channels[0], sitk.GetArrayViewFromImage(res.channels[0]) != 0)
    assert np.linalg.norm(ct_out - brain_in) < 1.0  # the skull-stripped CT is the brain
    marker_in = physical_centroid(img, geometry_case["marker"] > 0)
    marker_out = physical_centroid(res.label, sitk.GetArrayViewFromImage(res.label) > 0)
    assert np.linalg.norm(marker_out - marker_in) < 1.0


def test_orientation_can_be_kept():
    ph = make_stroke_phantom(shape=(40, 48, 48), spacing=(3.0, 3.0, 3.0), side="none", seed=7)
    img = sitk.GetImageFromArray(ph.image)
    img.SetSpacing((3.0, 3.0, 3.0))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    kept = preprocess_case(img, PreprocessConfig(orientation=None, **FAST))
    turned = preprocess_case(img, PreprocessConfig(**FAST))
    assert kept.channels[0].GetDirection() == img.GetDirection()
    assert turned.channels[0].GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert kept.info["input_orientation"] == "RAS"
    # same voxels in space: flipping x and y of one gives the other
    np.testing.assert_allclose(sitk.GetArrayFromImage(kept.channels[0])[:, ::-1, ::-1],
                               sitk.GetArrayFromImage(turned.channels[0]), atol=1e-3)


def test_contralateral_is_right_for_every_orientation(geometry_case):
    res = geometry_case["result"]
    inside = sitk.GetArrayViewFromImage(res.brain) > 0
    diff = sitk.GetArrayViewFromImage(res.channels[1])
    assert float(np.abs(diff[inside]).mean()) < 3.0  # symmetric phantom: anatomy cancels
    expected_tilt = 20.0 if geometry_case["name"].startswith("oblique") else 0.0
    assert res.info["plane_angle_deg"] == pytest.approx(expected_tilt, abs=1.5)


def test_plausibility_thresholds_turn_a_result_into_a_failure(geometry_case):
    sym = geometry_case["result"].symmetry
    check_symmetry(sym, PreprocessConfig())
    with pytest.raises(CaseError, match="similarity .* below 1.010"):
        check_symmetry(sym, PreprocessConfig(min_similarity=1.01))
    if geometry_case["name"].startswith("oblique"):
        with pytest.raises(CaseError, match="implausible mid-sagittal plane: tilted 2"):
            check_symmetry(sym, PreprocessConfig(max_plane_angle_deg=10.0))


def _write(img: sitk.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """One good CT and three bad ones, processed once."""
    root = tmp_path_factory.mktemp("bad")
    src = root / "in"
    head, _ = head_from_brain(sitk.ReadImage(str(DATA / "ct_brain_2mm.nii.gz")), seed=2)
    _write(head, src / "good.nii.gz")
    _write(sitk.Image([64, 64], sitk.sitkInt16), src / "slice2d.nii.gz")
    ph = make_stroke_phantom(shape=(48, 64, 64), spacing=(3.0, 3.0, 3.0), seed=1)
    mri = sitk.GetImageFromArray(((ph.image + 1000.0) / 2200.0 * 1000.0).astype(np.float32))  # 0..1000
    mri.SetSpacing((3.0, 3.0, 3.0))
    _write(mri, src / "mri.nii.gz")
    # a head turned 90 degrees: the mirror registration cannot find a plausible plane
    _write(move(head, rigid_motion(head, (0.0, 0.0, 90.0), (0.0, 0.0, 0.0))), src / "turned.nii.gz")
    before = _digest(src)
    out = root / "out"
    rows = run_dataset(src, out, PreprocessConfig(channels="ct+diff", **FAST), progress=False)
    return {"src": src, "out": out, "rows": {r["case"]: r for r in rows}, "before": before}


def test_bad_cases_are_reported_with_their_reason(bad_inputs):
    rows = bad_inputs["rows"]
    assert rows["good"]["status"] == "ok"
    assert rows["slice2d"]["status"] == "failed" and "2D" in rows["slice2d"]["reason"]
    assert rows["mri"]["status"] == "failed" and "do not look like CT in HU" in rows["mri"]["reason"]
    assert rows["turned"]["status"] == "failed"
    assert "mirror registration failed" in rows["turned"]["reason"] or "implausible" in rows["turned"]["reason"]
    assert rows["turned"]["plane_angle_deg"] != ""  # what was measured is still reported


def test_failed_cases_leave_no_files_and_the_input_is_untouched(bad_inputs):
    out = bad_inputs["out"]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["good_0000.nii.gz", "good_0001.nii.gz"]
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["numTraining"] == 1
    report = (out / REPORT_NAME).read_text(encoding="utf-8").splitlines()
    assert len(report) == 5 and report[0].startswith("case,status,reason")
    assert _digest(bad_inputs["src"]) == bad_inputs["before"]


def test_changed_settings_or_overlapping_folders_are_refused(bad_inputs):
    with pytest.raises(UserError, match="other settings .*channels"):
        run_dataset(bad_inputs["src"], bad_inputs["out"], PreprocessConfig(channels="ct", **FAST), progress=False)
    with pytest.raises(UserError, match="overlaps input folder"):
        run_dataset(bad_inputs["src"], bad_inputs["src"] / "out", PreprocessConfig(**FAST), progress=False)


def test_a_case_without_its_label_fails_and_labelled_ones_go_on(tmp_path):
    ph = make_stroke_phantom(shape=(48, 64, 64), spacing=(3.0, 3.0, 3.0), side="left", seed=8)
    for case in ("a", "b"):
        img = sitk.GetImageFromArray(ph.image)
        img.SetSpacing((3.0, 3.0, 3.0))
        _write(img, tmp_path / "in" / f"{case}.nii.gz")
    lab = sitk.GetImageFromArray(ph.lesion.astype(np.uint8))
    lab.SetSpacing((3.0, 3.0, 3.0))
    _write(lab, tmp_path / "labels" / "a.nii.gz")
    rows = run_dataset(tmp_path / "in", tmp_path / "out", PreprocessConfig(spacing=(3.0, 3.0, 3.0)),
                       labels_dir=tmp_path / "labels", progress=False)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "no label file" in rows[1]["reason"]
    moved = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "labelsTr" / "a.nii.gz")))
    assert moved.sum() == ph.lesion.sum()  # same grid: the label comes through unchanged
    assert (tmp_path / "out" / "qc" / "a.png").exists()


def test_brain_label_for_unlabelled_ssl_data(tmp_path):
    ph = make_stroke_phantom(shape=(48, 64, 64), spacing=(3.0, 3.0, 3.0), side="none", seed=9)
    img = sitk.GetImageFromArray(ph.image)
    img.SetSpacing((3.0, 3.0, 3.0))
    _write(img, tmp_path / "in" / "u1.nii.gz")
    config = PreprocessConfig(spacing=(3.0, 3.0, 3.0), qc=False)
    rows = run_dataset(tmp_path / "in", tmp_path / "out", config, progress=False, brain_label=True)
    assert rows[0]["status"] == "ok"
    info = json.loads((tmp_path / "out" / "dataset.json").read_text(encoding="utf-8"))
    assert info["labels"] == {"background": 0, "brain": 1}
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "labelsTr" / "u1.nii.gz")))
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "imagesTr" / "u1_0000.nii.gz")))
    assert label.sum() > 0.9 * ph.brain.sum()
    assert np.all(ct[label == 0] == 0)  # skull stripped with the same mask
    with pytest.raises(UserError, match="cannot be combined with --labels"):
        run_dataset(tmp_path / "in", tmp_path / "out2", config, labels_dir=tmp_path / "in", brain_label=True)
