"""`nnunet-ssl prepare-aspects`: the zone atlas registered to every CT, written as a stock nnU-Net dataset."""
import csv
import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.atlas import RIGHT_OFFSET
from nnunet_ssl.cli.main import main
from nnunet_ssl.phantom import make_stroke_phantom, write_image, write_phantom_dataset

SHAPE = (32, 40, 40)
ATLAS = ["--synthetic-atlas-shape", *map(str, SHAPE)]
SIDES = {"c0": "left", "c1": "right", "c2": "none", "box": "none", "empty": "none"}


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("aspects")
    cts = root / "ct"
    for i, side in enumerate(("left", "right", "none")):
        p = make_stroke_phantom(SHAPE, side=side, seed=40 + i)
        write_image(p.image, p.spacing, cts / f"c{i}.nii.gz")
    write_image(np.full(SHAPE, -1000.0, np.float32), (1, 1, 1), cts / "empty.nii.gz")  # an empty image
    box = np.full(SHAPE, -1000.0, np.float32)  # not a head: a block of soft tissue on a bone plate
    box[4:28, 5:35, 5:35] = 40.0
    box[:2] = 1000.0
    write_image(box + np.random.default_rng(0).normal(0, 3, SHAPE).astype(np.float32), (1, 1, 1),
                cts / "box.nii.gz")
    table = root / "sides.tsv"
    table.write_text("case\tside\n" + "".join(f"{c}\t{s}\n" for c, s in SIDES.items()), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def prepared(inputs):
    before = _digest(inputs / "ct"), (inputs / "sides.tsv").read_bytes()
    out = inputs / "raw" / "Dataset511_Zones"
    out.parent.mkdir()
    assert main(["prepare-aspects", str(inputs / "ct"), str(out), *ATLAS, "--min-brain-dice", "0.9",
                 "--flip-to-side", "left", "--lesion-sides", str(inputs / "sides.tsv"), "--no-progress"]) == 0
    assert (_digest(inputs / "ct"), (inputs / "sides.tsv").read_bytes()) == before  # inputs never modified
    return out


def _report(out):
    with open(out / "aspects_report.tsv", encoding="utf-8") as f:
        return {row["case"]: row for row in csv.DictReader(f, delimiter="\t")}


def test_dataset_passes_nnunet_integrity_check_and_bad_cases_are_reported_not_written(prepared):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(prepared), num_processes=1)
    meta = json.loads((prepared / "dataset.json").read_text(encoding="utf-8"))
    assert meta["numTraining"] == 3 and len(meta["labels"]) == 21
    assert meta["labels"]["left_caudate"] == 1 and meta["labels"]["right_M6"] == 20
    assert sorted(p.name for p in (prepared / "labelsTr").iterdir()) == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]
    report = _report(prepared)
    assert set(report) == set(SIDES)
    for case in ("c0", "c1", "c2"):
        assert report[case]["status"] == "written" and float(report[case]["brain_dice"]) >= 0.9
        assert (prepared / "qc" / f"{case}.png").is_file()
    assert report["box"]["status"] == "failed" and float(report["box"]["brain_dice"]) < 0.9
    assert "below 0.9" in report["box"]["reason"] and (prepared / "qc" / "box.png").is_file()
    assert report["empty"]["status"] == "failed" and "constant image" in report["empty"]["reason"]
    summary = json.loads((prepared / "aspects_report.json").read_text(encoding="utf-8"))
    assert summary["written"] == 3 and summary["failed"] == 2 and "synthetic" in summary["atlas"]


def test_lesions_end_up_on_one_side_and_zones_keep_theirs(prepared, inputs):
    report = _report(prepared)
    assert [report[c]["flipped"] for c in ("c0", "c1", "c2")] == ["False", "True", "False"]
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / "ct" / "c1.nii.gz")))
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(prepared / "imagesTr" / "c1_0000.nii.gz")))
    assert np.allclose(written, source[..., ::-1], atol=1e-3)  # mirrored left-right
    for case in ("c0", "c1", "c2"):
        zones = sitk.GetArrayFromImage(sitk.ReadImage(str(prepared / "labelsTr" / f"{case}.nii.gz")))
        assert set(np.unique(zones)) == set(range(21)), case
        mid = (SHAPE[2] - 1) / 2  # +x is the patient's (and, mirrored, the image's) left
        left_x = np.argwhere((zones >= 1) & (zones <= RIGHT_OFFSET))[:, 2]
        right_x = np.argwhere(zones > RIGHT_OFFSET)[:, 2]
        assert (left_x > mid).mean() > 0.95 and (right_x < mid).mean() > 0.95, case


def test_existing_output_refused_without_overwrite_and_replaced_completely_with_it(prepared, inputs, tmp_path,
                                                                                  capsys):
    before = _digest(prepared)
    ssl = write_phantom_dataset(tmp_path, 500, "HeadCT", n_train=1, shape=SHAPE, label="brain", seed=3)
    assert main(["prepare-aspects", str(ssl), str(prepared), *ATLAS, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "exists; pass --overwrite" in err and len(err.splitlines()) == 1
    assert _digest(prepared) == before
    copy = tmp_path / "Dataset512_Zones"
    assert main(["prepare-aspects", str(ssl), str(copy), *ATLAS, "--no-progress"]) == 0
    assert main(["prepare-aspects", str(ssl), str(copy), *ATLAS, "--no-progress", "--overwrite"]) == 0
    assert sorted(p.name for p in (copy / "labelsTr").iterdir()) == ["case_000.nii.gz"]  # an SSL dataset's cases
    assert not list(copy.parent.glob(".*partial"))


def _atlas_files(folder, zone_value=1, zone_shape=SHAPE):
    template = folder / "template.nii.gz"
    write_image(make_stroke_phantom(SHAPE, side="none", seed=1).image, (1, 1, 1), template)
    zones = np.zeros(zone_shape, np.uint8)
    zones[10:14, 10:14, 25:30] = zone_value
    zones[10:14, 10:14, 10:15] = 11
    write_image(zones, (1, 1, 1), folder / "zones.nii.gz")
    return ["--atlas-template", str(template), "--atlas-zones", str(folder / "zones.nii.gz")]


@pytest.mark.parametrize("problem, expected", [
    ("no input", "does not exist"),
    ("flip without table", "go together"),
    ("table lacks a case", "has no row for case"),
    ("empty table", "needs columns 'case' and 'side'"),
    ("template without zones", "--atlas-template and --atlas-zones go together"),
    ("zones on another grid", "not on the template's voxel grid"),
    ("zones with other labels", "holds value(s) [25.0]"),
    ("threshold above one", "between 0 and 1"),
    ("no worker", "-j/--jobs must be 1 or more"),
])
def test_bad_inputs_give_one_line_errors_and_write_nothing(inputs, tmp_path, capsys, problem, expected):
    cts, out = str(inputs / "ct"), str(tmp_path / "Dataset513_Zones")
    table = tmp_path / "sides.csv"
    table.write_text("case,side\nc0,left\n", encoding="utf-8")
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    argv = {
        "no input": lambda: [str(tmp_path / "nowhere"), out],
        "flip without table": lambda: [cts, out, "--flip-to-side", "left"],
        "table lacks a case": lambda: [cts, out, "--flip-to-side", "left", "--lesion-sides", str(table)],
        "empty table": lambda: [cts, out, "--flip-to-side", "left", "--lesion-sides", str(empty)],
        "template without zones": lambda: [cts, out, "--atlas-template", cts + "/c0.nii.gz"],
        "zones on another grid": lambda: [cts, out, *_atlas_files(tmp_path, zone_shape=(32, 40, 41))],
        "zones with other labels": lambda: [cts, out, *_atlas_files(tmp_path, zone_value=25)],
        "threshold above one": lambda: [cts, out, "--min-brain-dice", "1.5"],
        "no worker": lambda: [cts, out, "-j", "0"],
    }[problem]()
    assert main(["prepare-aspects", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "Dataset513_Zones").exists()


def test_user_atlas_is_registered(inputs, tmp_path):
    """An atlas from files (template, zones, no brain mask: computed) takes the place of the synthetic one."""
    out = tmp_path / "Dataset514_Zones"
    flags = _atlas_files(tmp_path)
    assert main(["prepare-aspects", str(inputs / "ct"), str(out), *flags, "--no-progress",
                 "--bspline-iterations", "0", "-j", "2"]) == 0
    report = _report(out)
    assert list(report) == sorted(SIDES) and report["c0"]["status"] == "written"  # in order, from 2 workers
    zones = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "c0.nii.gz")))
    assert set(np.unique(zones)) == {0, 1, 11}
    assert np.argwhere(zones == 1)[:, 2].mean() > np.argwhere(zones == 11)[:, 2].mean()  # left stays left
    assert "template" in json.loads((out / "aspects_report.json").read_text(encoding="utf-8"))["atlas"]


def test_command_default_threshold_is_the_library_one():
    from nnunet_ssl import prepare_aspects
    from nnunet_ssl.cli import prepare_aspects as cli

    assert cli.DEFAULT_MIN_BRAIN_DICE == prepare_aspects.DEFAULT_MIN_BRAIN_DICE
