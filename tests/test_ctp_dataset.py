"""`nnunet-ssl ctp-dataset`: perfusion maps as channels, core/penumbra labels or regions."""
import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_ssl.cli.main import main
from nnunet_ssl.ctp_dataset import MAPS, write_ctp_dataset
from nnunet_ssl.errors import UserError

SHAPE = (12, 20, 24)  # z, y, x
SPACING, ORIGIN = (0.9, 0.9, 3.0), (5.0, -10.0, 20.0)


def _image(array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    return image


def _write_cases(root, cases=("p1", "p2", "p3"), maps=MAPS):
    rng = np.random.default_rng(0)
    for case in cases:
        for name in maps:  # a random smooth volume per map
            (root / name).mkdir(parents=True, exist_ok=True)
            smooth = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2.0).astype(np.float32) * 50 + 20
            sitk.WriteImage(_image(smooth), str(root / name / f"{case}.nii.gz"))
        label = np.zeros(SHAPE, np.uint8)
        label[3:9, 4:14, 5:15] = 1  # penumbra around a core
        label[5:7, 7:11, 8:12] = 2
        (root / "labels").mkdir(exist_ok=True)
        sitk.WriteImage(_image(label), str(root / "labels" / f"{case}.nii.gz"))
    return root


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_maps_in_fixed_order_regions_declared_and_nnunet_accepts_it(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    src = _write_cases(tmp_path / "in")
    before = _digest(src)
    for regions, out in ((False, tmp_path / "Dataset640_CTP"), (True, tmp_path / "Dataset641_CTPRegions")):
        assert main(["ctp-dataset", str(src), str(out), "--no-progress"] + (["--regions"] if regions else [])) == 0
        verify_dataset_integrity(str(out), num_processes=1)
        dj = json.loads((out / "dataset.json").read_text())
        assert dj["channel_names"] == {"0": "CBF", "1": "CBV", "2": "TTP", "3": "Tmax", "4": "MIP"}
        assert all(get_normalization_scheme(n) is ZScoreNormalization for n in dj["channel_names"].values())
        for channel, name in dj["channel_names"].items():  # each channel file holds its map, unchanged
            written = sitk.ReadImage(str(out / "imagesTr" / f"p2_{int(channel):04d}.nii.gz"))
            source = sitk.ReadImage(str(src / name / "p2.nii.gz"))
            assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(source))
            assert np.allclose(written.GetOrigin(), ORIGIN) and np.allclose(written.GetSpacing(), SPACING)
        manager = LabelManager(dj["labels"], dj.get("regions_class_order"))
        assert manager.has_regions == regions
        if regions:
            assert dj["labels"] == {"background": 0, "hypoperfused": [1, 2], "core": [2]}
            assert dj["regions_class_order"] == [1, 2]
            # the regions of the reference label and back: nnU-Net's own conversion gives the label map again
            label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "p1.nii.gz")))
            onehot = np.stack([np.isin(label, r) for r in manager.foreground_regions]).astype(np.float32)
            assert np.array_equal(manager.convert_logits_to_segmentation(onehot * 20 - 10), label)
        else:
            assert dj["labels"] == {"background": 0, "penumbra": 1, "core": 2}
    assert _digest(src) == before


def test_mip_is_optional_and_refusals_name_case_and_map(tmp_path, capsys):
    src = _write_cases(tmp_path / "in", maps=MAPS[:4])
    summary = write_ctp_dataset(src, tmp_path / "Dataset642_NoMIP", progress=False)
    assert summary.channels == {0: "CBF", 1: "CBV", 2: "TTP", 3: "Tmax"}
    # a map on another grid: each of size, spacing, origin and direction is compared
    for what, change in (("size", lambda i: i[:, :, :-1]), ("spacing", lambda i: _respace(i, (0.9, 1.0, 3.0))),
                         ("origin", lambda i: _reorigin(i, (5.0, -10.0, 25.0))),
                         ("direction", lambda i: _redirect(i))):
        bad = tmp_path / f"bad_{what}"
        _write_cases(bad, maps=MAPS[:4])
        ttp = sitk.ReadImage(str(bad / "TTP" / "p2.nii.gz"))
        sitk.WriteImage(change(ttp), str(bad / "TTP" / "p2.nii.gz"))
        assert main(["ctp-dataset", str(bad), str(tmp_path / "Dataset643_Bad"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "case 'p2': map TTP (p2.nii.gz) is not on the grid of map CBF" in err and what in err, err
        assert not (tmp_path / "Dataset643_Bad").exists()
    # a missing map (MIP given for some cases must be given for all)
    (src / "MIP").mkdir()
    sitk.WriteImage(sitk.ReadImage(str(src / "CBF" / "p1.nii.gz")), str(src / "MIP" / "p1.nii.gz"))
    with pytest.raises(UserError, match=r"case 'p2': the MIP file .*p2\.nii\.gz does not exist"):
        write_ctp_dataset(src, tmp_path / "Dataset644_X", progress=False)
    (src / "MIP" / "p1.nii.gz").unlink()
    (src / "CBV" / "p3.nii.gz").unlink()
    with pytest.raises(UserError, match=r"case 'p3': the CBV file .*p3\.nii\.gz does not exist"):
        write_ctp_dataset(src, tmp_path / "Dataset644_X", progress=False)


def _respace(image, spacing):
    image = sitk.Image(image)
    image.SetSpacing(spacing)
    return image


def _reorigin(image, origin):
    image = sitk.Image(image)
    image.SetOrigin(origin)
    return image


def _redirect(image):
    image = sitk.Image(image)
    image.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


# ------------------------------------------------------------------------ colour-coded maps
def _colour_bar(n=101):
    """A rainbow colour bar: value i (0..n-1) drawn as a distinct colour (blue -> green -> red)."""
    t = np.linspace(0.0, 1.0, n)
    rgb = np.stack([np.clip(2 * t - 1, 0, 1), 1 - np.abs(2 * t - 1), np.clip(1 - 2 * t, 0, 1)], axis=1)
    return np.arange(n, dtype=float), np.round(rgb * 255)


def test_colour_coded_map_is_read_back_to_its_values_through_its_colour_bar(tmp_path, capsys):
    values, colours = _colour_bar()
    table = tmp_path / "cbf_bar.csv"
    table.write_text("value,r,g,b\n" + "".join(f"{v:g},{r:g},{g:g},{b:g}\n" for v, (r, g, b) in zip(values, colours)))
    src = _write_cases(tmp_path / "in", maps=MAPS[:4])
    truth = {}
    rng = np.random.default_rng(1)
    for case in ("p1", "p2", "p3"):  # CBF drawn as a picture: each value's colour, black outside the brain
        level = rng.integers(0, 101, size=SHAPE)
        brain = np.zeros(SHAPE, bool)
        brain[2:10, 3:17, 4:20] = True
        noise = rng.integers(-1, 2, size=SHAPE + (3,))  # compression noise, under half a colour step (about 5)
        rgb = np.where(brain[..., None], np.clip(colours[level] + noise, 0, 255), 0).astype(np.uint8)
        picture = sitk.GetImageFromArray(rgb, isVector=True)
        picture.SetSpacing(SPACING)
        picture.SetOrigin(ORIGIN)
        sitk.WriteImage(picture, str(src / "CBF" / f"{case}.nii.gz"))
        truth[case] = np.where(brain, level, 0.0)
    out = tmp_path / "Dataset645_Colour"
    before = _digest(src)
    assert main(["ctp-dataset", str(src), str(out), "--colour-table", f"CBF={table}", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "CBF: colours read with its table; voxels off the colour bar: at most" in printed
    for case, expected in truth.items():
        written = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
        assert written.GetNumberOfComponentsPerPixel() == 1
        assert np.array_equal(sitk.GetArrayFromImage(written), expected.astype(np.float32)), case
        assert np.allclose(written.GetOrigin(), ORIGIN) and np.allclose(written.GetSpacing(), SPACING)
    # the grey-scale maps are as they were
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / "p1_0001.nii.gz"))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(src / "CBV" / "p1.nii.gz"))))
    assert json.loads((out / "dataset.json").read_text())["colour_tables"] == {"CBF": str(table)}
    assert _digest(src) == before
    # without the table the picture is refused with the way out; a table for no map, or a bad table, too
    assert main(["ctp-dataset", str(src), str(tmp_path / "Dataset646_X"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "case 'p1': CBF" in err and "--colour-table CBF=TABLE.csv" in err, err
    assert main(["ctp-dataset", str(src), str(tmp_path / "Dataset646_X"), "--colour-table", f"MIP={table}"]) == 2
    assert "colour table(s) given for MIP, which is not a map of this dataset" in capsys.readouterr().err
    for text, message in (("value,r,g\n1,2,3\n", "missing b"), ("value,r,g,b\n1,0,0,0\n2,0,0,0\n", "stands for both"),
                          ("value,r,g,b\n1,0,0,300\n2,0,0,0\n", "0..255"), ("value,r,g,b\n1,x,0,0\n2,0,0,0\n", "line 2")):
        table.write_text(text)
        assert main(["ctp-dataset", str(src), str(tmp_path / "Dataset646_X"), "--colour-table", f"CBF={table}"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "Dataset646_X").exists()


def test_colours_off_the_bar_are_filled_and_counted():
    from nnunet_ssl.colour_maps import ColourTable, colours_to_values

    table = ColourTable.from_rows([(10.0, 255, 0, 0), (20.0, 0, 255, 0)])
    rgb = np.array([[250, 10, 0], [10, 240, 10], [120, 120, 0], [0, 0, 0]])
    values, unmatched = colours_to_values(rgb, table, max_distance=30)
    assert values.tolist() == [10.0, 20.0, 10.0, 10.0] and unmatched.tolist() == [False, False, True, True]
    values, _ = colours_to_values(rgb, table, max_distance=30, fill=-1.0)
    assert values.tolist() == [10.0, 20.0, -1.0, -1.0]
    _, unmatched = colours_to_values(rgb, table, max_distance=200)  # (120, 120, 0) is 170 from both
    assert unmatched.tolist() == [False, False, False, True]
