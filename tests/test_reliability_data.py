"""Bad input to `preprocess-ct` and `prepare-ssl`: each kind answered with a clear reason, outputs
never deleted or mixed without --overwrite/--force, interrupted runs resumed correctly."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ct_inputs import phantom_images, tree_hash
from nnunet_ssl.cli.main import main
from nnunet_ssl.ct import dataset as ct_dataset
from nnunet_ssl.ct.dataset import run_dataset
from nnunet_ssl.ct.io import CaseError, find_cases, read_image
from nnunet_ssl.ct.pipeline import PreprocessConfig
from nnunet_ssl.errors import UserError
from nnunet_ssl.phantom import make_stroke_phantom

FAST = dict(spacing=(3.0, 3.0, 3.0), qc=False)
PHANTOM_ML = ["--min-brain-ml", "20", "--max-brain-ml", "200"]
PP = ["--brain-mask", "builtin", "--no-qc", "--no-progress"]


def _img(arr, spacing=(3.0, 3.0, 3.0), origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def write_cts(folder: Path, names, labels: Path | None = None, side="left"):
    """Head phantoms (48 x 64 x 64 at 3 mm) named ``names``, their lesion masks in ``labels``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        ph = make_stroke_phantom(shape=(48, 64, 64), spacing=(3.0, 3.0, 3.0), side=side, seed=20 + i)
        sitk.WriteImage(_img(ph.image), str(folder / f"{name}.nii.gz"))
        if labels is not None:
            labels.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(_img(ph.lesion.astype(np.uint8)), str(labels / f"{name}.nii.gz"))
    return ph


def spacings(out: Path) -> dict[str, tuple]:
    return {p.name: tuple(round(s, 3) for s in sitk.ReadImage(str(p)).GetSpacing())
            for p in sorted((out / "imagesTr").iterdir())}


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


# 1. an interrupted --overwrite run, resumed

def test_interrupted_overwrite_resumes_with_the_new_settings(tmp_path, monkeypatch):
    write_cts(tmp_path / "ct", ["a", "b", "c", "d"])
    out = tmp_path / "out"
    run_dataset(tmp_path / "ct", out, PreprocessConfig(**FAST), progress=False)
    new = PreprocessConfig(spacing=(4.0, 4.0, 4.0), qc=False)
    real, calls = ct_dataset.process_one, []

    def interrupted(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second case
        return real(*args, **kwargs)

    monkeypatch.setattr(ct_dataset, "process_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_dataset(tmp_path / "ct", out, new, overwrite=True, progress=False)
    monkeypatch.setattr(ct_dataset, "process_one", real)

    rows = run_dataset(tmp_path / "ct", out, new, progress=False)  # resumed without --overwrite
    assert [r["status"] for r in rows] == ["skipped", "ok", "ok", "ok"]
    assert set(spacings(out).values()) == {(4.0, 4.0, 4.0)}
    assert sorted(spacings(out)) == [f"{c}_0000.nii.gz" for c in "abcd"]


def test_a_marker_made_with_other_settings_does_not_count_as_done(tmp_path):
    write_cts(tmp_path / "ct", ["a", "b"])
    out = tmp_path / "out"
    run_dataset(tmp_path / "ct", out, PreprocessConfig(**FAST), progress=False)
    new = PreprocessConfig(spacing=(4.0, 4.0, 4.0), qc=False)
    # the folder's config says "new settings" while the cases were made with the old ones
    config = json.loads((out / "preprocess_config.json").read_text(encoding="utf-8"))
    config["spacing"] = [4.0, 4.0, 4.0]
    (out / "preprocess_config.json").write_text(json.dumps(config), encoding="utf-8")
    rows = run_dataset(tmp_path / "ct", out, new, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert set(spacings(out).values()) == {(4.0, 4.0, 4.0)}


# 2. a folder preprocess-ct did not make

def test_a_foreign_folder_is_refused_without_overwrite(tmp_path, capsys):
    write_cts(tmp_path / "ct", ["a"])
    out = tmp_path / "Dataset001_Other"
    (out / "imagesTr").mkdir(parents=True)
    (out / "dataset.json").write_text('{"name": "theirs"}', encoding="utf-8")
    sitk.WriteImage(_img(np.zeros((8, 8, 8), np.int16)), str(out / "imagesTr" / "x_0000.nii.gz"))
    before = tree_hash(out)
    assert main(["preprocess-ct", str(tmp_path / "ct"), str(out), *PP, "--spacing", "3"]) == 2
    err = capsys.readouterr().err
    assert "not made by preprocess-ct" in err and "--overwrite" in err
    assert tree_hash(out) == before

    assert main(["preprocess-ct", str(tmp_path / "ct"), str(out), *PP, "--spacing", "3", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["a_0000.nii.gz"]
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["name"] == out.name


# 3. truncated and corrupt image files

@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("fraction", [0.33, 0.9])
def test_truncated_files_are_read_as_errors(tmp_path, suffix, fraction):
    path = tmp_path / f"cut{suffix}"
    sitk.WriteImage(_img(np.random.default_rng(0).normal(size=(20, 24, 24)).astype(np.float32)), str(path))
    read_image(path)  # complete: fine
    truncate(path, fraction)
    with pytest.raises(CaseError, match=f"cannot read cut{suffix}: .*(truncated|incomplete)"):
        read_image(path)


def test_a_corrupt_gzip_stream_is_an_error(tmp_path):
    path = tmp_path / "bad.nii.gz"
    sitk.WriteImage(_img(np.random.default_rng(1).normal(size=(20, 24, 24)).astype(np.float32)), str(path))
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # damaged in the middle
    path.write_bytes(bytes(data))
    with pytest.raises(CaseError, match="cannot read bad.nii.gz: (corrupt|truncated)"):
        read_image(path)


def test_truncated_cases_fail_in_both_commands(tmp_path, raw):
    write_cts(tmp_path / "ct", ["good", "cut"])
    truncate(tmp_path / "ct" / "cut.nii.gz", 0.9)
    rows = run_dataset(tmp_path / "ct", tmp_path / "out", PreprocessConfig(**FAST), progress=False)
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "truncated" in rows[0]["reason"]

    src = tmp_path / "ssl"
    src.mkdir()
    for name, seed in (("good", 1), ("cut", 2)):
        sitk.WriteImage(phantom_images(seed=seed)[0], str(src / f"{name}.nii.gz"))
    truncate(src / "cut.nii.gz", 0.33)
    assert main(["prepare-ssl", "-i", str(src), "-d", "610", "-n", "Cut", "--no-progress", *PHANTOM_ML]) == 0
    import csv

    with open(raw / "Dataset610_Cut" / "prepare_report.csv", newline="", encoding="utf-8") as f:
        report = {r["case_id"]: r for r in csv.DictReader(f)}
    assert report["ssl_good"]["status"] == "included"
    assert report["ssl_cut"]["status"] == "skipped" and "truncated" in report["ssl_cut"]["reason"]
    assert not (raw / "Dataset610_Cut" / "imagesTr" / "ssl_cut_0000.nii.gz").exists()


def test_truncated_label_maps_are_refused_by_evaluate_and_ensemble(tmp_path):
    from nnunet_ssl.ensemble import ensemble_folders
    from nnunet_ssl.evaluation.io import read_label_map

    lab = np.zeros((20, 24, 24), np.uint8)
    lab[5:15, 5:15, 5:15] = 1
    for run in ("r1", "r2"):
        (tmp_path / run).mkdir()
        sitk.WriteImage(_img(lab), str(tmp_path / run / "c1.nii.gz"))
    truncate(tmp_path / "r2" / "c1.nii.gz", 0.5)
    with pytest.raises(UserError, match="truncated"):
        read_label_map(tmp_path / "r2" / "c1.nii.gz")
    with pytest.raises(UserError, match="truncated"):
        ensemble_folders([tmp_path / "r1", tmp_path / "r2"], tmp_path / "vote", file_ending=".nii.gz")


# 5. --overwrite with fewer channels

def test_overwrite_leaves_exactly_the_new_outputs(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    write_cts(tmp_path / "ct", ["a"], labels=tmp_path / "labels")
    out = tmp_path / "Dataset778_Fewer"
    run_dataset(tmp_path / "ct", out, PreprocessConfig(channels="ct+diff", **FAST),
                labels_dir=tmp_path / "labels", progress=False)
    assert (out / "imagesTr" / "a_0001.nii.gz").is_file()
    rows = run_dataset(tmp_path / "ct", out, PreprocessConfig(**FAST), labels_dir=tmp_path / "labels",
                       overwrite=True, progress=False)
    assert [r["status"] for r in rows] == ["ok"]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["a_0000.nii.gz"]
    verify_dataset_integrity(str(out), num_processes=1)


def test_overwrite_replaces_only_the_commands_own_entries(tmp_path, capsys):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    write_cts(tmp_path / "ct", ["a", "b"], labels=tmp_path / "labels")
    out = tmp_path / "Dataset779_Shared"
    run_dataset(tmp_path / "ct", out, PreprocessConfig(channels="ct+diff", spacing=(3.0, 3.0, 3.0)),
                labels_dir=tmp_path / "labels", progress=False)
    assert (out / "qc" / "b.png").is_file() and (out / "imagesTr" / "b_0001.nii.gz").is_file()
    # the user's own things beside the dataset, and a temporary file of an interrupted write
    (out / "notes.txt").write_text("my notes", encoding="utf-8")
    (out / "mine").mkdir()
    (out / "mine" / "keep.nii.gz").write_bytes(b"not ours")
    (out / f".{ct_dataset.CONFIG_NAME}.tmp").write_text("{", encoding="utf-8")
    for folder in ("ct", "labels"):  # case b leaves the input
        (tmp_path / folder / "b.nii.gz").unlink()

    assert main(["preprocess-ct", str(tmp_path / "ct"), str(out), "--labels", str(tmp_path / "labels"),
                 *PP, "--spacing", "3", "--overwrite"]) == 0
    assert "kept 2 entries not written by preprocess-ct" in capsys.readouterr().out
    assert (out / "notes.txt").read_text(encoding="utf-8") == "my notes"
    assert (out / "mine" / "keep.nii.gz").read_bytes() == b"not ours"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["imagesTr", "labelsTr", "meta", "dataset.json", "preprocess_report.csv", "preprocess_config.json",
         "notes.txt", "mine"])  # no qc/ (--no-qc now), no leftover temporary file
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["a_0000.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["a.nii.gz"]
    assert sorted(p.name for p in (out / "meta").iterdir()) == ["a.json"]
    verify_dataset_integrity(str(out), num_processes=1)


def test_removing_an_entry_that_is_a_link_keeps_what_it_points_to(tmp_path):
    from nnunet_ssl.ct.folders import remove_entries

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x_0000.nii.gz").write_bytes(b"theirs")
    out = tmp_path / "out"
    out.mkdir()
    (out / "imagesTr").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert remove_entries(out, ("imagesTr", "dataset.json")) == ["notes.txt"]
    assert not (out / "imagesTr").exists() and not (out / "imagesTr").is_symlink()
    assert (tmp_path / "elsewhere" / "x_0000.nii.gz").read_bytes() == b"theirs"


# 6. label values nnU-Net refuses

def test_odd_label_values_are_refused_with_the_values(tmp_path, capsys):
    ph = write_cts(tmp_path / "ct", ["v3", "v255", "vneg", "ok"])
    (tmp_path / "labels").mkdir()
    for name, value in (("v3", 3), ("v255", 255), ("vneg", -1), ("ok", 1)):
        lab = ph.lesion.astype(np.int16)
        lab[ph.lesion] = value
        lab[0, 0, 0] = 1  # a lesion voxel too
        sitk.WriteImage(_img(lab), str(tmp_path / "labels" / f"{name}.nii.gz"))
    out = tmp_path / "out"
    assert main(["preprocess-ct", str(tmp_path / "ct"), str(out), "--labels", str(tmp_path / "labels"),
                 *PP, "--spacing", "3"]) == 1
    stdout = capsys.readouterr().out
    assert "failed v3: label values 3 found" in stdout
    assert "failed v255: label values 255 found" in stdout
    assert "failed vneg: label values -1 found" in stdout
    info = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert info["labels"] == {"background": 0, "lesion": 1} and info["numTraining"] == 1

    # several classes only when asked for: labels 0..K in dataset.json, consecutive
    out3 = tmp_path / "out3"
    assert main(["preprocess-ct", str(tmp_path / "ct"), str(out3), "--labels", str(tmp_path / "labels"),
                 *PP, "--spacing", "3", "--max-label", "3"]) == 1
    info = json.loads((out3 / "dataset.json").read_text(encoding="utf-8"))
    assert info["labels"] == {"background": 0, "lesion": 1, "label_2": 2, "label_3": 3}
    assert info["numTraining"] == 2


# 8. a resume whose labels folder lacks a finished case

def test_a_resume_never_deletes_finished_outputs(tmp_path, capsys):
    write_cts(tmp_path / "ct", ["a", "b"], labels=tmp_path / "labels")
    out = tmp_path / "out"
    args = ["preprocess-ct", str(tmp_path / "ct"), str(out), "--labels", str(tmp_path / "labels"), *PP,
            "--spacing", "3"]
    assert main(args) == 0
    (tmp_path / "labels" / "b.nii.gz").unlink()
    before = tree_hash(out)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "b" in err and "no label" in err and "--overwrite" in err
    assert tree_hash(out) == before


# 11. plain names ending in four digits

def test_plain_names_with_four_digits_are_separate_cases(tmp_path, raw):
    plain, layout = tmp_path / "plain", tmp_path / "layout"
    plain.mkdir(), layout.mkdir()
    for i in range(1, 4):
        sitk.WriteImage(phantom_images(seed=i)[0], str(plain / f"patient_{i:04d}.nii.gz"))
    for case in ("a", "b"):
        (layout / f"{case}_0000.nii.gz").write_bytes(b"")
    assert list(find_cases(plain)) == ["patient_0001", "patient_0002", "patient_0003"]
    assert list(find_cases(layout)) == ["a", "b"]  # nnU-Net's channel layout: the suffix is the channel
    (layout / "c_0001.nii.gz").write_bytes(b"")  # channel sets no longer complete: plain names
    assert list(find_cases(layout)) == ["a_0000", "b_0000", "c_0001"]

    assert main(["prepare-ssl", "-i", str(plain), "-d", "611", "-n", "Plain", "--no-progress", *PHANTOM_ML]) == 0
    names = sorted(p.name for p in (raw / "Dataset611_Plain" / "imagesTr").iterdir())
    assert names == [f"plain_patient_{i:04d}_0000.nii.gz" for i in range(1, 4)]


# 14. output folders that cannot be written, damaged side files

def test_output_that_is_a_file_or_not_writable(tmp_path, raw, capsys, monkeypatch):
    write_cts(tmp_path / "ct", ["a"])
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    assert main(["preprocess-ct", str(tmp_path / "ct"), str(afile), *PP]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["preprocess-ct", str(tmp_path / "ct"), str(afile / "out"), *PP]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert main(["prepare-ssl", "-i", str(tmp_path / "ct"), "-d", "612", "-n", "F", "--raw", str(afile),
                 "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err
    raw.mkdir()
    (raw / "Dataset612_F").write_text("x", encoding="utf-8")
    assert main(["prepare-ssl", "-i", str(tmp_path / "ct"), "-d", "612", "-n", "F", "--force", "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err
    (raw / "Dataset612_F").unlink()

    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # how a read-only folder answers
    assert main(["preprocess-ct", str(tmp_path / "ct"), str(tmp_path / "ro"), *PP]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Permission denied" in err
    assert main(["prepare-ssl", "-i", str(tmp_path / "ct"), "-d", "612", "-n", "F", "--no-progress"]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_damaged_side_files_give_a_message_or_a_redo(tmp_path, capsys):
    write_cts(tmp_path / "ct", ["a", "b"])
    out = tmp_path / "out"
    args = ["preprocess-ct", str(tmp_path / "ct"), str(out), *PP, "--spacing", "3"]
    assert main(args) == 0
    capsys.readouterr()
    truncate(out / "meta" / "b.json", 0.5)  # a marker cut while being written
    assert main(args) == 0
    assert "1 processed, 1 skipped" in capsys.readouterr().out
    json.loads((out / "meta" / "b.json").read_text(encoding="utf-8"))
    truncate(out / "preprocess_config.json", 0.5)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "preprocess_config.json" in err and "--overwrite" in err and "Traceback" not in err


# 18. NaN and infinite voxels

def test_non_finite_voxels_are_refused(tmp_path, raw):
    ph = write_cts(tmp_path / "ct", ["ok"])
    bad = ph.image.copy()
    bad[20, 30, 30:33] = [np.nan, np.inf, -np.inf]
    sitk.WriteImage(_img(bad), str(tmp_path / "ct" / "nan.nii.gz"))
    rows = run_dataset(tmp_path / "ct", tmp_path / "out", PreprocessConfig(**FAST), progress=False)
    assert rows[0]["case"] == "nan" and rows[0]["status"] == "failed"
    assert "3 NaN or infinite voxels" in rows[0]["reason"]

    src, masks = tmp_path / "ssl", tmp_path / "masks"
    src.mkdir(), masks.mkdir()
    for name, seed in (("img", 1), ("msk", 2)):
        ct, brain, _ = phantom_images(seed=seed)
        if name == "img":
            arr = sitk.GetArrayFromImage(ct)
            arr[10, 10, 10] = np.nan
            ct = sitk.GetImageFromArray(arr)
            ct.CopyInformation(brain)
        else:
            arr = sitk.GetArrayFromImage(brain).astype(np.float32)
            arr[10, 10, 10] = np.nan
            brain = sitk.GetImageFromArray(arr)
            brain.CopyInformation(ct)
        sitk.WriteImage(ct, str(src / f"{name}.nii.gz"))
        sitk.WriteImage(brain, str(masks / f"{name}.nii.gz"))
    assert main(["prepare-ssl", "-i", str(src), "--masks", str(masks), "-d", "613", "-n", "Nan",
                 "--no-progress", *PHANTOM_ML]) == 2  # no usable case
    assert not (raw / "Dataset613_Nan").exists()
    from nnunet_ssl.prepare_ssl import PrepareOptions, prepare_case, collect_tasks

    tasks, _ = collect_tasks([("s", src)], [masks], tmp_path / "w")
    reasons = {t.case_id: prepare_case(t, PrepareOptions(20, 200)).reason for t in tasks}
    assert "1 NaN or infinite voxels" in reasons["s_img"] and "img.nii.gz" in reasons["s_img"]
    assert "1 NaN or infinite voxels" in reasons["s_msk"] and "msk.nii.gz" in reasons["s_msk"]


# 19. a label map on another grid

def test_a_label_on_another_grid_is_refused_like_a_mask(tmp_path, raw):
    ph = write_cts(tmp_path / "ct", ["shift", "slices"])
    (tmp_path / "labels").mkdir()
    lesion = ph.lesion.astype(np.uint8)
    sitk.WriteImage(_img(lesion, origin=(30.0, 0.0, 0.0)), str(tmp_path / "labels" / "shift.nii.gz"))
    sitk.WriteImage(_img(lesion[:-4]), str(tmp_path / "labels" / "slices.nii.gz"))
    rows = {r["case"]: r for r in run_dataset(tmp_path / "ct", tmp_path / "out", PreprocessConfig(**FAST),
                                              labels_dir=tmp_path / "labels", progress=False)}
    assert rows["shift"]["status"] == rows["slices"]["status"] == "failed"
    assert "another spacing, origin or direction" in rows["shift"]["reason"]
    assert "has size (64, 64, 44)" in rows["slices"]["reason"] and "voxel grid" in rows["slices"]["reason"]


# 21. orientation codes

def test_invalid_orientation_codes_are_refused(tmp_path, raw, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for code in ("LLL", "XYZ", "LP"):
        assert main(["prepare-ssl", "-i", str(src), "-d", "614", "-n", "O", "--orientation", code]) == 2
        err = capsys.readouterr().err
        assert "--orientation" in err and "each axis once" in err and f"'{code}'" in err
    assert main(["preprocess-ct", str(src), str(tmp_path / "o"), "--orientation", "LLL"]) == 2
    assert "each axis once" in capsys.readouterr().err


# kinds of non-image input, each with its reason

def test_empty_4d_and_non_image_files_have_a_reason(tmp_path):
    ph = write_cts(tmp_path / "ct", ["good"])
    img = _img(ph.image)
    (tmp_path / "ct" / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "ct" / "junk.nii.gz").write_bytes(b"hello")
    sitk.WriteImage(img[:, :, 20], str(tmp_path / "ct" / "flat.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([img, img]), str(tmp_path / "ct" / "four.nii.gz"))
    rows = {r["case"]: r["reason"] for r in run_dataset(tmp_path / "ct", tmp_path / "out",
                                                        PreprocessConfig(**FAST), progress=False)}
    assert rows["good"] == ""
    assert rows["empty"] == "cannot read empty.nii.gz: empty file (0 bytes)"
    assert rows["junk"].startswith("cannot read junk.nii.gz: corrupt compressed data")
    assert rows["flat"] == "CT is 2D; a 3D volume is required"
    assert rows["four"] == "four.nii.gz is 4D; a 3D volume is required"
