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
