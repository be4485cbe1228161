"""nnunet-ssl prepare-ssl: mixed formats and orientations in, a clean nnU-Net dataset with brain labels out."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ct_inputs import dice, phantom_images, tree_hash, write_dicom_series
from nnunet_ssl.cli.main import main

REPO = Path(__file__).resolve().parents[1]
REAL_CT = REPO / "tests" / "data" / "ct_brain_2mm.nii.gz"
PHANTOM_ML = ["--min-brain-ml", "20", "--max-brain-ml", "200"]  # the 32x40x40 phantoms' brains are small


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_mixed_formats_spacings_and_orientations(tmp_path, raw):
    """NIfTI, NRRD and a DICOM series in three orientations come out LPS with their brain masks as labels."""
    a, b = tmp_path / "in" / "centreA", tmp_path / "in" / "centreB"
    specs = {  # file -> (spacing z,y,x, orientation, seed)
        a / "p1.nii.gz": ((2.0, 2.0, 2.0), "LPS", 1),
        a / "p2.nrrd": ((2.5, 2.0, 2.0), "RAS", 2),
        b / "p3": ((2.0, 1.6, 1.6), "PIR", 3),  # DICOM series folder
    }
    truth = {}
    for path, (spacing, orientation, seed) in specs.items():
        ct, brain, _ = phantom_images(spacing, orientation, seed)
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(ct, str(path))
        else:
            write_dicom_series(ct, path)
        truth[path] = (sitk.DICOMOrient(ct, "LPS"), sitk.DICOMOrient(brain, "LPS"))
    (b / "notes.txt").write_text("sidecar files are ignored", encoding="utf-8")
    before = tree_hash(tmp_path / "in")

    assert main(["prepare-ssl", "-i", str(a), f"B={b}", "-d", "600", "-n", "HeadCT", "-j", "2",
                 "--no-progress", *PHANTOM_ML]) == 0

    folder = raw / "Dataset600_HeadCT"
    assert tree_hash(tmp_path / "in") == before
    ds = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    assert ds["channel_names"] == {"0": "CT"} and ds["labels"] == {"background": 0, "brain": 1}
    assert ds["numTraining"] == 3 and ds["file_ending"] == ".nii.gz"
    manifest = {r["case_id"]: r for r in read_csv(folder / "manifest.csv")}
    assert set(manifest) == {"centreA_p1", "centreA_p2", "B_p3"}
    assert manifest["B_p3"]["source"] == "B" and manifest["B_p3"]["source_path"] == str(b / "p3")
    assert manifest["centreA_p2"]["original_orientation"] == "RAS"
    assert manifest["centreA_p1"]["mask_source"] == "builtin"
    for case, path in [("centreA_p1", a / "p1.nii.gz"), ("centreA_p2", a / "p2.nrrd"), ("B_p3", b / "p3")]:
        image = sitk.ReadImage(str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        label = sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz"))
        ct, brain = truth[path]
        assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
        assert image.GetSize() == label.GetSize() == ct.GetSize()
        assert image.GetSpacing() == pytest.approx(ct.GetSpacing())
        assert image.GetOrigin() == pytest.approx(ct.GetOrigin(), abs=1e-3)
        assert np.allclose(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ct), atol=0.51)
        assert dice(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(brain)) > 0.8
        assert float(manifest[case]["brain_volume_ml"]) > 0
    assert {r["status"] for r in read_csv(folder / "prepare_report.csv")} == {"included"}
    assert not list(raw.glob(".*partial*"))


def test_bad_cases_are_skipped_with_reasons(tmp_path, raw):
    src = tmp_path / "in"
    src.mkdir()
    ct, _, _ = phantom_images(seed=4)
    sitk.WriteImage(ct, str(src / "good.nii.gz"))
    (src / "broken.nii.gz").write_bytes(b"not an image")
    mri = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 800, (32, 40, 40)).astype(np.float32))
    sitk.WriteImage(mri, str(src / "mri.nii.gz"))
    sitk.WriteImage(ct[:, :, :4], str(src / "thin.nii.gz"))
    big, _, _ = phantom_images(spacing=(6.0, 6.0, 6.0), seed=5)  # brain about 1.8 L: above the phantom range
    sitk.WriteImage(big, str(src / "big.nii.gz"))
    before = tree_hash(src)

    assert main(["prepare-ssl", "-i", f"s={src}", "-d", "601", "-n", "Bad", "--no-progress", *PHANTOM_ML]) == 0

    assert tree_hash(src) == before
    folder = raw / "Dataset601_Bad"
    report = {r["case_id"]: r for r in read_csv(folder / "prepare_report.csv")}
    assert report["s_good"]["status"] == "included"
    reasons = {k: r["reason"] for k, r in report.items() if r["status"] == "skipped"}
    assert set(reasons) == {"s_broken", "s_mri", "s_thin", "s_big"}
    assert "cannot read broken.nii.gz" in reasons["s_broken"]
    assert "do not look like CT" in reasons["s_mri"]
    assert "at least 8 voxels" in reasons["s_thin"]
    assert "outside the plausible range 20-200 mL" in reasons["s_big"]
    assert float(report["s_big"]["brain_volume_ml"]) > 200
    assert [r["case_id"] for r in read_csv(folder / "manifest.csv")] == ["s_good"]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["s_good_0000.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text(encoding="utf-8"))["numTraining"] == 1


def test_user_masks_matched_by_case_name(tmp_path, raw):
    src, masks = tmp_path / "ct", tmp_path / "masks"
    src.mkdir(), masks.mkdir()
    for i, name in enumerate(["ok", "wrong_shape", "empty", "no_mask"]):
        ct, brain, _ = phantom_images(orientation="RAS", seed=10 + i)
        sitk.WriteImage(ct, str(src / f"{name}.nii.gz"))
        if name == "ok":
            sitk.WriteImage(brain, str(masks / f"{name}.nii.gz"))
            expected = sitk.GetArrayFromImage(sitk.DICOMOrient(brain, "LPS"))
        elif name == "wrong_shape":
            sitk.WriteImage(brain[:, :, 2:], str(masks / f"{name}.nii.gz"))
        elif name == "empty":
            sitk.WriteImage(brain * 0, str(masks / f"{name}.nii.gz"))
    before = tree_hash(src), tree_hash(masks)

    assert main(["prepare-ssl", "-i", f"c={src}", "--masks", str(masks), "-d", "602", "-n", "Masks",
                 "--no-progress", *PHANTOM_ML]) == 0

    assert (tree_hash(src), tree_hash(masks)) == before
    folder = raw / "Dataset602_Masks"
    report = {r["case_id"]: r for r in read_csv(folder / "prepare_report.csv")}
    assert report["c_ok"]["status"] == "included"
    assert "has size (40, 40, 30)" in report["c_wrong_shape"]["reason"]
    assert "image's voxel grid" in report["c_wrong_shape"]["reason"]
    assert report["c_empty"]["reason"] == "empty brain mask"
    assert "no mask named 'no_mask'" in report["c_no_mask"]["reason"]
    assert np.array_equal(array(folder / "labelsTr" / "c_ok.nii.gz"), expected)
    assert read_csv(folder / "manifest.csv")[0]["mask_source"] == str(masks / "ok.nii.gz")


def test_existing_dataset_kept_without_force_and_replaced_with_it(tmp_path, raw, capsys):
    src = tmp_path / "in"
    src.mkdir()
    ct, _, _ = phantom_images(seed=7)
    sitk.WriteImage(ct, str(src / "a.nii.gz"))
    args = ["prepare-ssl", "-i", str(src), "-d", "603", "-n", "Again", "--no-progress", *PHANTOM_ML]
    assert main(args) == 0
    folder = raw / "Dataset603_Again"
    (folder / "marker").write_text("mine", encoding="utf-8")

    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert (folder / "marker").read_text(encoding="utf-8") == "mine"

    assert main(args + ["--force"]) == 0
    assert not (folder / "marker").exists() and (folder / "imagesTr" / "in_a_0000.nii.gz").is_file()


def test_refusals_write_nothing(tmp_path, raw, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "junk.nii.gz").write_bytes(b"junk")
    base = ["prepare-ssl", "--no-progress", "-n", "X"]

    assert main(base + ["-i", str(src), "-d", "604"]) == 2
    assert "no usable case among 1 (in_junk: cannot read" in capsys.readouterr().err
    assert not (raw / "Dataset604_X").exists() and not list(raw.glob(".*"))

    assert main(base + ["-i", str(tmp_path / "missing"), "-d", "604"]) == 2
    assert "does not exist" in capsys.readouterr().err

    (raw / "Dataset605_Other").mkdir(parents=True)
    assert main(base + ["-i", str(src), "-d", "605"]) == 2
    assert "dataset id 605 is already used" in capsys.readouterr().err

    assert main(base + ["-i", str(raw), "-d", "606"]) == 2
    assert "overlap" in capsys.readouterr().err

    assert main(base + ["-i", str(src), "-d", "607", "--min-brain-ml", "900", "--max-brain-ml", "800"]) == 2
    assert "--min-brain-ml must be below --max-brain-ml" in capsys.readouterr().err


@pytest.mark.skipif(not REAL_CT.is_file(), reason="no real CT brain in tests/data")
def test_real_ct_anatomy_gives_adult_brain_label(tmp_path, raw):
    """A real CT brain in a synthetic skull passes the default adult range; the label is brain, not skull or air."""
    from nnunet_ssl.ct.synthetic import head_from_brain

    head, brain = head_from_brain(sitk.ReadImage(str(REAL_CT)))
    src = tmp_path / "in"
    src.mkdir()
    sitk.WriteImage(head, str(src / "real.nii.gz"))

    assert main(["prepare-ssl", "-i", str(src), "-d", "608", "-n", "Real", "--no-progress"]) == 0

    folder = raw / "Dataset608_Real"
    row = read_csv(folder / "manifest.csv")[0]
    assert 700 <= float(row["brain_volume_ml"]) <= 2100
    label = sitk.ReadImage(str(folder / "labelsTr" / "in_real.nii.gz"))
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "imagesTr" / "in_real_0000.nii.gz")))
    mask = sitk.GetArrayFromImage(label).astype(bool)
    assert np.mean(image[mask] > 250) < 0.01 and np.mean(image[mask] < -200) < 0.01  # neither bone nor air
    assert dice(mask, sitk.GetArrayFromImage(sitk.DICOMOrient(brain, "LPS"))) > 0.9
