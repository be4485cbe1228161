"""`nnunet-ssl add-scalars`: clinical scalars as constant input channels of a new raw dataset."""
import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import bin_path, run_command
from nnunet_ssl.cli.main import main
from nnunet_ssl.errors import UserError
from nnunet_ssl.scalar_channels import add_scalar_channels

SHAPE = (10, 12, 14)  # z, y, x
BOX = (slice(2, 8), slice(3, 10), slice(2, 12))  # the "brain": nonzero voxels, 0 outside (skull-stripped)
SPACING = (0.8, 0.9, 2.0)
ORIGIN = (10.0, -20.0, 30.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a rotation: geometry must be copied, not defaulted


def _image(array, dtype):
    image = sitk.GetImageFromArray(array.astype(dtype))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def _dataset(folder, train=("case_a", "case_b", "case_c"), test=("case_t",)):
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    rng = np.random.default_rng(0)
    for subset, cases in (("imagesTr", train), ("imagesTs", test)):
        for case in cases:
            ct = np.zeros(SHAPE)
            ct[BOX] = rng.uniform(10, 80, size=ct[BOX].shape)
            ct[5, 6, 7] = 0  # a zero inside the brain: nnU-Net's region fills such holes
            (folder / subset).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(_image(ct, np.float32), str(folder / subset / f"{case}_0000.nii.gz"))
            if subset == "imagesTr":
                label = np.zeros(SHAPE)
                label[4:6, 5:8, 4:9] = 1
                (folder / "labelsTr").mkdir(exist_ok=True)
                sitk.WriteImage(_image(label, np.uint8), str(folder / "labelsTr" / f"{case}.nii.gz"))
    generate_dataset_json(str(folder), channel_names={0: "CT"}, labels={"background": 0, "lesion": 1},
                          num_training_cases=len(train), file_ending=".nii.gz")
    return folder


def _csv(path, rows, header="case_id,NIHSS,age"):
    path.write_text("\n".join([header] + rows) + "\n", encoding="utf-8")
    return path


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


GOOD_ROWS = ["case_a,17,65.5", "case_b,0,80", "case_c,4,71.25", "case_t,25,59", "case_x,9,40"]


def test_values_round_trip_on_channel_0s_grid_and_nnunet_accepts_the_dataset(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    src = _dataset(tmp_path / "Dataset601_Stroke")
    table = _csv(tmp_path / "clinical.csv", GOOD_ROWS)
    before = _digest(src)
    out = tmp_path / "Dataset602_StrokeClinical"
    summary = add_scalar_channels(src, table, out, progress=False)
    assert summary.channels == {1: "NIHSS", 2: "age"}
    assert summary.unused_rows == ["case_x"]
    assert _digest(src) == before  # the input is untouched

    expected = {row.split(",")[0]: [float(v) for v in row.split(",")[1:]] for row in GOOD_ROWS}
    inside = np.zeros(SHAPE, bool)
    inside[BOX] = True
    for case, subset in [("case_a", "imagesTr"), ("case_b", "imagesTr"), ("case_c", "imagesTr"),
                         ("case_t", "imagesTs")]:
        ch0 = sitk.ReadImage(str(out / subset / f"{case}_0000.nii.gz"))
        for k, value in enumerate(expected[case], start=1):
            channel = sitk.ReadImage(str(out / subset / f"{case}_{k:04d}.nii.gz"))
            assert channel.GetSize() == ch0.GetSize() and channel.GetSpacing() == ch0.GetSpacing()
            assert channel.GetOrigin() == ch0.GetOrigin() and channel.GetDirection() == ch0.GetDirection()
            arr = sitk.GetArrayFromImage(channel)
            assert np.all(arr[inside] == value) and np.all(arr[~inside] == 0)  # the hole at (5, 6, 7) too
    # the original channel and the labels are copied byte for byte
    for name, digest in before.items():
        if name != "dataset.json":
            assert _digest(out)[name] == digest
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "CT", "1": "noNorm", "2": "noNorm"}
    assert meta["numTraining"] == 3 and meta["scalar_channels"]["1"]["column"] == "NIHSS"

    verify_dataset_integrity(str(out), num_processes=1)  # raises on any problem

    # nnU-Net crops the new dataset exactly like the old one ...
    def crop_box(folder, n_channels, case="case_a"):
        data, _ = SimpleITKIO().read_images([str(folder / "imagesTr" / f"{case}_{c:04d}.nii.gz")
                                             for c in range(n_channels)])
        return crop_to_nonzero(data)[2]

    assert crop_box(out, 3) == crop_box(src, 1) == [[2, 8], [3, 10], [2, 12]]
    # ... which a value in every voxel would stop: --whole-image, constant everywhere
    whole = tmp_path / "Dataset603_StrokeWhole"
    add_scalar_channels(src, table, whole, columns=["NIHSS"], whole_image=True, progress=False)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(whole / "imagesTr" / "case_a_0001.nii.gz")))
    assert np.all(arr == 17.0)
    assert crop_box(whole, 2) == [[0, 10], [0, 12], [0, 14]]
    assert not (whole / "imagesTr" / "case_a_0002.nii.gz").exists()


@pytest.mark.parametrize("rows, message", [
    (["case_a,17,65", "case_c,4,71", "case_t,25,59"], "case(s) 'case_b' of the dataset have no row"),
    (["case_a,,65", "case_b,0,80", "case_c,4,71", "case_t,25,59"], "case 'case_a', column 'NIHSS': the value is empty"),
    (["case_a,17,65", "case_b,0,n/a", "case_c,4,71", "case_t,25,59"],
     "case 'case_b', column 'age': the value is 'n/a', not a finite number"),
    (["case_a,17,65", "case_b,0,80", "case_c,4,71"], "case(s) 'case_t' of the dataset have no row"),
])
def test_missing_or_bad_value_is_refused_naming_the_case(tmp_path, rows, message):
    src = _dataset(tmp_path / "Dataset601_Stroke")
    before = _digest(src)
    out = tmp_path / "Dataset602_StrokeClinical"
    with pytest.raises(UserError) as e:
        add_scalar_channels(src, _csv(tmp_path / "clinical.csv", rows), out, progress=False)
    assert message in str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".*.partial"))
    assert _digest(src) == before


def test_command_ranges_refuses_an_existing_output_and_replaces_it_when_asked(tmp_path, capsys):
    src = _dataset(tmp_path / "Dataset601_Stroke", train=("case_a", "case_b"), test=())
    table = _csv(tmp_path / "clinical.csv", ["case_a,21,65", "case_b,42,80"])
    out = tmp_path / "Dataset602_StrokeClinical"
    proc = run_command([bin_path("nnunet-ssl"), "add-scalars", str(src), str(table), str(out),
                        "--columns", "NIHSS", "--no-progress"], env=None)
    assert "new channel(s) 1 = NIHSS" in proc.stdout
    first = _digest(out)

    assert main(["add-scalars", str(src), str(table), str(out), "--no-progress"]) == 2
    assert "exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert _digest(out) == first

    assert main(["add-scalars", str(src), str(table), str(out), "--columns", "NIHSS", "--range", "NIHSS=0:42",
                 "--overwrite", "--no-progress"]) == 0
    assert "range 0..42 -> 0..1" in capsys.readouterr().out
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / "case_a_0001.nii.gz")))[BOX]
    assert np.all(values == 0.5)  # 21 of 0..42
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["scalar_channels"]["1"]["range"] == [0, 42]

    out_of_range = _csv(tmp_path / "bad.csv", ["case_a,21,65", "case_b,43,80"])
    assert main(["add-scalars", str(src), str(out_of_range), str(tmp_path / "Dataset604_X"), "--columns", "NIHSS",
                 "--range", "NIHSS=0:42", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "case 'case_b', column 'NIHSS': 43 lies outside the range 0..42" in err and len(err.splitlines()) == 1

    assert main(["add-scalars", str(src), str(table), str(src / "nested"), "--no-progress"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert main(["add-scalars", str(src), str(table), str(tmp_path / "Dataset601_Again"), "--no-progress"]) == 2
    assert f"dataset id 601 is already used by {src}" in capsys.readouterr().err
