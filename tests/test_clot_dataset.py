"""`nnunet-ssl clot-dataset`: NCCT registered rigidly to the CTA, two-channel raw dataset."""
import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.cli.main import main
from nnunet_ssl.clot_dataset import crop_box, write_clot_dataset
from nnunet_ssl.errors import UserError
from nnunet_ssl.phantom import make_stroke_phantom

# the NCCT is the CTA seen through this transform: NCCT(p) = CTA(TRUE(p)) for a physical point p
TRUE = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, np.deg2rad(3.0), (2.0, -2.5, 1.5))
POINTS = [(x, y, z) for x in (-12.0, 12.0) for y in (-12.0, 12.0) for z in (-8.0, 8.0)]  # inside the head


def _cta(seed):
    p = make_stroke_phantom((32, 48, 48), seed=seed)
    cta = sitk.GetImageFromArray(p.image)
    cta.SetOrigin((-24.0, -24.0, -16.0))  # centred on 0: POINTS lie in the head
    label = sitk.GetImageFromArray(p.lesion.astype(np.uint8))  # any blob stands in for a clot
    label.CopyInformation(cta)
    return cta, label


def _ncct(cta):
    grid = sitk.Image([52, 52, 34], sitk.sitkFloat32)  # its own grid: a larger field of view, shifted
    grid.SetOrigin((-21.0, -26.0, -17.0))
    return sitk.Resample(cta, grid, TRUE, sitk.sitkLinear, -1000.0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clot") / "inputs"
    for case, seed in (("cs1", 3), ("cs2", 4)):
        cta, label = _cta(seed)
        for role, image in (("cta", cta), ("ncct", _ncct(cta)), ("labels", label)):
            (root / role).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(root / role / f"{case}.nii.gz"))
    return root


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_registration_recovers_the_known_motion_and_nnunet_accepts_the_dataset(inputs, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    before = _digest(inputs)
    out = tmp_path / "Dataset620_Clot"
    summary = write_clot_dataset(inputs, out, progress=False)
    assert _digest(inputs) == before
    for case in ("cs1", "cs2"):
        transform = summary.transforms[case]  # CTA point -> NCCT point: must undo TRUE
        errors = [np.linalg.norm(np.subtract(TRUE.TransformPoint(transform.TransformPoint(p)), p)) for p in POINTS]
        assert max(errors) < 1.0, (case, errors)
        cta = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
        ncct = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0001.nii.gz"))
        source = sitk.ReadImage(str(inputs / "cta" / f"{case}.nii.gz"))
        assert ncct.GetSize() == cta.GetSize() == source.GetSize()
        assert np.allclose(ncct.GetOrigin(), source.GetOrigin())
        assert np.array_equal(sitk.GetArrayFromImage(cta), sitk.GetArrayFromImage(source))
        assert (out / "qc" / f"{case}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verify_dataset_integrity(str(out), num_processes=1)
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT", "1": "CT"} and dj["labels"] == {"background": 0, "clot": 1}


def test_box_in_mm_crops_all_channels_alike(inputs, tmp_path):
    out = tmp_path / "Dataset621_ClotBox"
    assert main(["clot-dataset", str(inputs), str(out), "--box-mm", "-10", "-5.5", "-4", "10", "12", "6",
                 "--no-progress"]) == 0
    full, _ = _cta(3)
    r = crop_box(full, (-10, -5.5, -4, 10, 12, 6))
    # voxel centres at -24 + i: x -10..10 -> 14..34, y -5.5..12 -> 19..36, z -4..6 -> index 12..22
    assert r == (14, 19, 12, 35, 37, 23)
    images = [sitk.ReadImage(str(out / sub / name)) for sub, name in
              (("imagesTr", "cs1_0000.nii.gz"), ("imagesTr", "cs1_0001.nii.gz"), ("labelsTr", "cs1.nii.gz"))]
    assert all(i.GetSize() == (21, 18, 11) for i in images)
    assert all(np.allclose(i.GetOrigin(), (-10.0, -5.0, -4.0)) for i in images)
    assert np.array_equal(sitk.GetArrayFromImage(images[0]), sitk.GetArrayFromImage(full)[12:23, 19:37, 14:35])


def test_csv_with_npy_inputs_and_refusals_name_the_case(inputs, tmp_path, capsys):
    arrays = tmp_path / "npy"
    arrays.mkdir()
    cta, label = _cta(3)
    np.save(arrays / "cta.npy", sitk.GetArrayFromImage(cta))
    np.save(arrays / "label.npy", sitk.GetArrayFromImage(label))
    table = tmp_path / "cases.csv"
    table.write_text(f"case,cta,ncct,label\nnp1,npy/cta.npy,{inputs / 'ncct' / 'cs1.nii.gz'},npy/label.npy\n")
    # without the spacing a .npy is refused, naming the case
    assert main(["clot-dataset", str(table), str(tmp_path / "Dataset622_A"), "--no-progress"]) == 2
    assert "case 'np1'" in capsys.readouterr().err
    # .npy arrays get origin 0: the NCCT (origin about -21 mm) still registers, from the centred start
    assert main(["clot-dataset", str(table), str(tmp_path / "Dataset622_A"), "--npy-spacing", "1", "1", "1",
                 "--no-progress"]) == 0
    assert (tmp_path / "Dataset622_A" / "imagesTr" / "np1_0001.nii.gz").is_file()
    # a missing file
    table.write_text("case,cta,ncct,label\nnp2,npy/cta.npy,npy/gone.nii.gz,npy/label.npy\n")
    with pytest.raises(UserError, match=r"case 'np2': the ncct file .*gone\.nii\.gz does not exist"):
        write_clot_dataset(table, tmp_path / "Dataset623_B", npy_spacing=(1, 1, 1))
    # a label on another grid
    np.save(arrays / "small.npy", sitk.GetArrayFromImage(label)[:, :, :40])
    table.write_text(f"case,cta,ncct,label\nnp3,npy/cta.npy,{inputs / 'ncct' / 'cs1.nii.gz'},npy/small.npy\n")
    with pytest.raises(UserError, match=r"case 'np3': the label small\.npy is not on the CTA's voxel grid"):
        write_clot_dataset(table, tmp_path / "Dataset623_B", npy_spacing=(1, 1, 1))
    # a blank NCCT (ITK stops) and one of noise (no shared structure): the registration fails, naming the case
    for name, ncct in (("blank", np.full((32, 48, 48), -1000.0, np.float32)),
                       ("noise", np.random.default_rng(0).normal(0, 100, (32, 48, 48)).astype(np.float32))):
        np.save(arrays / f"{name}.npy", ncct)
        table.write_text(f"case,cta,ncct,label\n{name},npy/cta.npy,npy/{name}.npy,npy/label.npy\n")
        with pytest.raises(UserError, match=f"case '{name}': registration of the NCCT to the CTA failed"):
            write_clot_dataset(table, tmp_path / "Dataset623_B", npy_spacing=(1, 1, 1))
    assert not (tmp_path / "Dataset623_B").exists()
    # an existing output is kept unless --overwrite
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        write_clot_dataset(table, tmp_path / "Dataset622_A", npy_spacing=(1, 1, 1))


def test_a_box_given_on_a_template_is_mapped_onto_each_case(tmp_path):
    from nnunet_ssl.clot_dataset import template_box_on_case

    template, _ = _cta(3)
    root = tmp_path / "inputs"
    moves = {"t1": sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, np.deg2rad(5.0), (6.0, -4.0, 3.0)),
             "t2": sitk.Euler3DTransform((0.0, 0.0, 0.0), np.deg2rad(-4.0), 0.0, 0.0, (-5.0, 3.0, -2.0))}
    for case, move in moves.items():  # each CTA is the template seen through its move: CTA(p) = template(move(p))
        cta = sitk.Resample(template, template, move, sitk.sitkLinear, -1000.0)
        label = sitk.Image(cta.GetSize(), sitk.sitkUInt8)
        label.CopyInformation(cta)
        for role, image in (("cta", cta), ("ncct", cta), ("labels", label)):
            (root / role).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(root / role / f"{case}.nii.gz"))
    template_file = tmp_path / "template.nii.gz"
    sitk.WriteImage(template, str(template_file))
    box = (-10.0, -12.0, -6.0, 10.0, 8.0, 6.0)  # mm, in the template's space
    out = tmp_path / "Dataset621_ClotBox"
    assert main(["clot-dataset", str(root), str(out), "--box-mm", *map(str, box), "--template", str(template_file),
                 "--no-progress"]) == 0
    for case, move in moves.items():
        cta = sitk.ReadImage(str(root / "cta" / f"{case}.nii.gz"))
        want = crop_box(cta, template_box_on_case(box, move), case)  # the box through the true move
        plain = crop_box(cta, box, case)  # the same numbers read on the case
        written = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
        start = np.round(cta.TransformPhysicalPointToContinuousIndex(written.GetOrigin())).astype(int)
        got = tuple(start) + tuple(start + np.array(written.GetSize()))
        assert np.abs(np.subtract(got, want)).max() <= 1, (case, got, want)
        assert np.abs(np.subtract(got, plain)).max() >= 3, (case, got, plain)  # the template mattered
    assert json.loads((out / "dataset.json").read_text())["crop_box_template"] == str(template_file)
    with pytest.raises(UserError, match="give the box in the template's coordinates"):
        write_clot_dataset(root, tmp_path / "Dataset622_X", template=template_file, progress=False)
