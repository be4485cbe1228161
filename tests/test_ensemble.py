"""Seed ensembles: majority vote by hand, folders of label maps, nnU-Net's probability averaging, refusals."""
import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.cli.main import main
from nnunet_ssl.ensemble import ensemble_folders, majority_vote
from nnunet_ssl.errors import UserError
from readonly import read_only

SPACING, ORIGIN = (0.5, 0.6, 2.0), (10.0, -4.0, 3.0)
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
PLANS = {"dataset_name": "Dataset777_Vote", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
         "configurations": {}}
DATASET = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz"}

# three runs' label maps of one 2 x 2 x 3 case, and the vote worked out by hand voxel by voxel
RUNS = [np.array([[[0, 1, 1], [2, 0, 1]], [[0, 0, 2], [1, 1, 0]]]),
        np.array([[[0, 1, 0], [2, 1, 1]], [[1, 0, 2], [2, 1, 0]]]),
        np.array([[[1, 1, 0], [1, 2, 0]], [[2, 0, 1], [1, 0, 0]]])]
VOTE = np.array([[[0, 1, 0], [2, 0, 1]], [[0, 0, 2], [1, 1, 0]]])
#  voxel (0,1,1): votes 0, 1, 2 -> three-way tie -> lowest label 0; (1,0,0): 0, 1, 2 -> 0; (0,0,2): 1, 0, 0 -> 0


def _write(folder, name, array, spacing=SPACING, meta=True):
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(folder / name))
    if meta:
        (folder / "dataset.json").write_text(json.dumps(DATASET), encoding="utf-8")
        (folder / "plans.json").write_text(json.dumps(PLANS), encoding="utf-8")


def test_majority_vote_of_three_hand_made_maps():
    assert np.array_equal(majority_vote(RUNS), VOTE)
    # two runs that disagree: the tie goes to the background (the lowest label)
    assert np.array_equal(majority_vote([np.array([0, 1, 1]), np.array([1, 0, 1])]), np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="differ in shape"):
        majority_vote([np.zeros(3), np.zeros(4)])


def test_majority_vote_of_folders_keeps_names_and_geometry(tmp_path):
    runs = [tmp_path / f"seed{i}" for i in range(3)]
    for run, array in zip(runs, RUNS):
        _write(run, "case_001.nii.gz", array)
        _write(run, "case_002.nii.gz", (array > 0).astype(int))
        (run / "case_001.npz").write_bytes(b"ignored by the vote")
    out = tmp_path / "vote"
    assert main(["ensemble", "-i", *map(str, runs), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["case_001.nii.gz", "case_002.nii.gz", "dataset.json",
                                                     "plans.json"]
    image = sitk.ReadImage(str(out / "case_001.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(image), VOTE)
    assert np.allclose(image.GetSpacing(), SPACING) and np.allclose(image.GetOrigin(), ORIGIN)
    assert np.allclose(image.GetDirection(), DIRECTION)
    binary = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_002.nii.gz")))
    assert np.array_equal(binary, majority_vote([(a > 0).astype(int) for a in RUNS]))


def test_refuses_bad_ensembles(tmp_path, capsys):
    runs = [tmp_path / f"seed{i}" for i in range(3)]
    for run, array in zip(runs, RUNS):
        _write(run, "case_001.nii.gz", array)
    with pytest.raises(UserError, match="at least 2 runs"):
        ensemble_folders(runs[:1], tmp_path / "o")
    with pytest.raises(UserError, match="given twice"):
        ensemble_folders([runs[0], runs[0]], tmp_path / "o")
    with pytest.raises(UserError, match="is one of the inputs"):
        ensemble_folders(runs, runs[1])
    _write(runs[2], "case_002.nii.gz", RUNS[0])
    with pytest.raises(UserError, match=r"seed0 lacks 1 case\(s\) that other runs have \(case_002.nii.gz\)"):
        ensemble_folders(runs, tmp_path / "o")
    (runs[2] / "case_002.nii.gz").unlink()
    _write(runs[1], "case_001.nii.gz", RUNS[1], spacing=(0.5, 0.6, 3.0))
    with pytest.raises(UserError, match="case_001.nii.gz: the geometry in .*seed1.* differs"):
        ensemble_folders(runs, tmp_path / "o")
    assert main(["ensemble", "-i", str(runs[0]), "-o", str(tmp_path / "o")]) == 2
    assert "at least 2 runs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _probabilities(folder, name, probs, spacing=SPACING):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{name}.npz", probabilities=probs.astype(np.float32))
    props = {"spacing": list(spacing[::-1]),
             "sitk_stuff": {"spacing": spacing, "origin": ORIGIN, "direction": DIRECTION}}
    with open(folder / f"{name}.pkl", "wb") as f:
        pickle.dump(props, f)
    (folder / "dataset.json").write_text(json.dumps(DATASET), encoding="utf-8")
    (folder / "plans.json").write_text(json.dumps(PLANS), encoding="utf-8")


def test_average_of_probabilities_uses_nnunets_ensembling(tmp_path):
    fg = [np.array([[[0.9, 0.2, 0.6, 0.5]]]), np.array([[[0.8, 0.4, 0.3, 0.5]]]), np.array([[[0.1, 0.3, 0.5, 0.6]]])]
    runs = [tmp_path / f"seed{i}" for i in range(3)]
    for run, p in zip(runs, fg):
        _probabilities(run, "case_001", np.stack([1 - p, p]))
    out = tmp_path / "avg"
    report = ensemble_folders(runs, out, method="average", save_probabilities=True)
    assert report.cases == ["case_001.nii.gz"]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_001.nii.gz")))
    mean_fg = np.mean(fg, axis=0)  # 0.6, 0.3, 0.4667, 0.5333
    assert np.array_equal(seg, (mean_fg > 0.5).astype(np.uint8))
    assert np.allclose(np.load(out / "case_001.npz")["probabilities"][1], mean_fg)
    # while the vote of the same runs' label maps says otherwise at voxel 3 (0, 0, 1 -> 0)
    assert np.array_equal(majority_vote([(p > 0.5).astype(int) for p in fg])[0, 0], [1, 0, 0, 0])
    # geometry is checked from the .pkl files
    _probabilities(runs[2], "case_001", np.stack([1 - fg[2], fg[2]]), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(UserError, match="case_001: the geometry"):
        ensemble_folders(runs, tmp_path / "avg2", method="average")
    with pytest.raises(UserError, match="needs --method average"):
        ensemble_folders(runs, tmp_path / "avg3", save_probabilities=True)


def _three_runs(tmp_path):
    runs = [tmp_path / f"seed{i}" for i in range(3)]
    for run, array in zip(runs, RUNS):
        _write(run, "case_001.nii.gz", array)
    return runs


def test_existing_output_is_refused_without_force_and_replaced_completely_with_it(tmp_path, capsys):
    runs = _three_runs(tmp_path)
    out = tmp_path / "other_run"
    _write(out, "theirs.nii.gz", RUNS[0])
    before = sorted(p.name for p in out.iterdir())
    assert main(["ensemble", "-i", *map(str, runs), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before  # nothing of theirs touched
    assert main(["ensemble", "-i", *map(str, runs), "-o", str(out), "--force"]) == 0
    # replaced completely: the other run's case is gone, the ensemble is all there is
    assert sorted(p.name for p in out.iterdir()) == ["case_001.nii.gz", "dataset.json", "plans.json"]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_001.nii.gz"))), VOTE)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left
    # an empty existing folder is no one's predictions: used without --force
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["ensemble", "-i", *map(str, runs), "-o", str(empty)]) == 0
    # --force never deletes an input that lies inside the output folder
    with pytest.raises(UserError, match="inside the output folder"):
        ensemble_folders([tmp_path / "seed0", tmp_path / "seed1"], tmp_path, force=True)
    assert (tmp_path / "seed0" / "case_001.nii.gz").is_file()


def test_output_that_is_a_file_or_read_only_is_a_clear_error(tmp_path, capsys):
    runs = _three_runs(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main(["ensemble", "-i", *map(str, runs), "-o", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err
    with read_only(tmp_path / "locked") as locked:
        assert main(["ensemble", "-i", *map(str, runs), "-o", str(locked / "vote")]) == 2
        assert "cannot write" in capsys.readouterr().err


def test_corrupt_files_are_named(tmp_path, capsys):
    runs = _three_runs(tmp_path)
    (runs[1] / "case_001.nii.gz").write_bytes(b"\x1f\x8b truncated")
    assert main(["ensemble", "-i", *map(str, runs), "-o", str(tmp_path / "vote")]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "seed1" in err and "case_001.nii.gz" in err and "Traceback" not in err
    fg = np.array([[[0.9, 0.2]]])
    prob_runs = [tmp_path / f"p{i}" for i in range(2)]
    for run in prob_runs:
        _probabilities(run, "case_001", np.stack([1 - fg, fg]))
    (prob_runs[1] / "case_001.npz").write_bytes(b"PK truncated")
    with pytest.raises(UserError, match=r"cannot read .*p1.*case_001\.npz"):
        ensemble_folders(prob_runs, tmp_path / "avg", method="average")
    _probabilities(prob_runs[1], "case_001", np.stack([1 - fg, fg]))
    (prob_runs[0] / "case_001.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match=r"cannot read .*p0.*case_001\.pkl"):
        ensemble_folders(prob_runs, tmp_path / "avg", method="average")
    assert not (tmp_path / "avg").exists() and not (tmp_path / "vote").exists()


def test_fractional_label_maps_are_refused(tmp_path):
    # a probability map given as label maps (nnU-Net's reader already turns NaN into 0)
    runs = _three_runs(tmp_path)
    image = sitk.GetImageFromArray(np.where(RUNS[1] > 0, 0.6, 0).astype(np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(runs[1] / "case_001.nii.gz"))
    with pytest.raises(UserError, match=r"seed1.*case_001\.nii\.gz holds non-integer"):
        ensemble_folders(runs, tmp_path / "vote")
