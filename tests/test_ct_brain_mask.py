"""Brain extraction: the built-in CT method on a real CT brain and on phantoms, and tool selection."""
from __future__ import annotations

import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ssl.ct.brain_mask import brain_mask, builtin_brain_mask, mask_volume_ml, resolve_method
from nnunet_ssl.ct.io import CaseError
from nnunet_ssl.ct.synthetic import head_from_brain
from nnunet_ssl.errors import UserError
from nnunet_ssl.phantom import make_stroke_phantom

DATA = Path(__file__).parent / "data"


def dice(a: sitk.Image | np.ndarray, b: sitk.Image | np.ndarray) -> float:
    a = (sitk.GetArrayViewFromImage(a) if isinstance(a, sitk.Image) else a) > 0
    b = (sitk.GetArrayViewFromImage(b) if isinstance(b, sitk.Image) else b) > 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def as_image(arr: np.ndarray, spacing: float) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing((spacing,) * 3)
    return img


@pytest.fixture(scope="module")
def real_head():
    return head_from_brain(sitk.ReadImage(str(DATA / "ct_brain_2mm.nii.gz")), noise_hu=3.0, seed=1)


def test_builtin_mask_matches_the_real_ct_brain(real_head):
    head, truth = real_head
    mask = brain_mask(head, method="builtin")
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == head.GetSize() and mask.GetOrigin() == head.GetOrigin()
    assert dice(mask, truth) > 0.95
    assert abs(mask_volume_ml(mask) - mask_volume_ml(truth)) < 0.05 * mask_volume_ml(truth)
    # no skull or scalp: every masked voxel is soft tissue in HU
    values = sitk.GetArrayViewFromImage(head)[sitk.GetArrayViewFromImage(mask) > 0]
    assert np.percentile(values, 99.9) < 120


@pytest.mark.parametrize("seed", [0, 1])
def test_builtin_mask_matches_phantom_brains(seed):
    ph = make_stroke_phantom(shape=(64, 64, 64), spacing=(2.5, 2.5, 2.5), side="left", seed=seed)
    mask = brain_mask(as_image(ph.image, 2.5))
    # the phantom's brain excludes a thin CSF layer that the intracranial mask keeps
    assert dice(mask, ph.brain) > 0.93
    # a hypodense lesion is still brain (only voxels on the brain's very edge may drop out)
    assert sitk.GetArrayViewFromImage(mask)[ph.lesion].mean() > 0.97


def test_opening_cuts_a_thin_soft_tissue_bridge_through_the_skull():
    ph = make_stroke_phantom(shape=(80, 96, 96), spacing=(1.0, 1.0, 1.0), side="none", noise_hu=1.0, seed=2)
    arr = np.pad(ph.image, ((0, 0), (0, 0), (0, 40)), constant_values=-1000.0)
    brain = np.pad(ph.brain, ((0, 0), (0, 0), (0, 40)))
    zc, yc = 40, 48
    edge = int(np.nonzero(brain[zc, yc])[0].max())
    # a 6 mm wide soft-tissue bridge from the brain's edge, through the skull, to a blob
    # (think orbit or muscle) 20 mm outside the head
    arr[zc - 3:zc + 3, yc - 3:yc + 3, edge:edge + 30] = 40.0
    zz, yy, xx = np.ogrid[:arr.shape[0], :arr.shape[1], :arr.shape[2]]
    blob = (zz - zc) ** 2 + (yy - yc) ** 2 + (xx - edge - 36) ** 2 <= 8 ** 2
    arr[blob] = 40.0
    img = as_image(arr, 1.0)
    fine = dict(smoothing_mm=0.0, work_spacing_mm=None)  # isolate the opening
    cut = sitk.GetArrayFromImage(builtin_brain_mask(img, opening_mm=3.0, **fine)) > 0
    kept = sitk.GetArrayFromImage(builtin_brain_mask(img, opening_mm=1.0, **fine)) > 0
    assert not cut[blob].any()
    assert kept[blob].all(), "with a 1 mm opening the bridge survives: the test would not show the cut"
    assert dice(cut, brain) > 0.9


def test_implausible_volume_is_a_case_error():
    ph = make_stroke_phantom(shape=(32, 32, 32), spacing=(1.0, 1.0, 1.0), side="none", seed=0)
    with pytest.raises(CaseError, match="brain mask volume .* outside the plausible range"):
        brain_mask(as_image(ph.image, 1.0))  # a 30 mm head has a ~10 mL brain


# --- selection of external tools -------------------------------------------------

FAKE_TOOL = """#!{python}
import sys
import numpy as np
import SimpleITK as sitk
args = sys.argv[1:]
if {fail}:
    print("model weights not found", file=sys.stderr)
    sys.exit(3)
src = args[args.index("-i") + 1]
if "-m" in args:
    out = args[args.index("-m") + 1]
else:
    out = args[args.index("-o") + 1].replace(".nii.gz", "_mask.nii.gz")
img = sitk.ReadImage(src)
arr = np.zeros(sitk.GetArrayViewFromImage(img).shape, np.uint8)
z, y, x = (s // 2 for s in arr.shape)
arr[z - 8:z + 8, y - 8:y + 8, x - 8:x + 8] = 1  # a box: easy to tell from the built-in mask
mask = sitk.GetImageFromArray(arr)
mask.CopyInformation(img)
sitk.WriteImage(mask, out)
"""


def install_tool(folder: Path, name: str, fail: bool = False) -> None:
    path = folder / name
    path.write_text(FAKE_TOOL.format(python=sys.executable, fail=fail), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))  # only the fake tools are visible
    return folder


def test_selection_without_external_tools(bin_dir):
    assert resolve_method("auto") == "builtin"
    assert resolve_method("builtin") == "builtin"
    for method in ("synthstrip", "hdbet"):
        with pytest.raises(UserError, match="needs `.*` on the PATH"):
            resolve_method(method)
    with pytest.raises(UserError, match="unknown brain mask method"):
        resolve_method("bet2")


def test_auto_prefers_synthstrip_and_uses_its_mask(bin_dir):
    install_tool(bin_dir, "mri_synthstrip")
    install_tool(bin_dir, "hd-bet")
    assert resolve_method("auto") == "synthstrip"
    ph = make_stroke_phantom(shape=(40, 40, 40), spacing=(3.0, 3.0, 3.0), seed=0)
    img = as_image(ph.image, 3.0)
    img.SetOrigin((10.0, -20.0, 5.0))
    mask = brain_mask(img, method="auto", min_volume_ml=1.0)
    arr = sitk.GetArrayFromImage(mask)
    assert arr.sum() == 16 ** 3 and arr[20, 20, 20] == 1
    assert mask.GetOrigin() == img.GetOrigin()


def test_hdbet_only_when_asked_for(bin_dir):
    install_tool(bin_dir, "hd-bet")
    assert resolve_method("auto") == "builtin"  # trained on MRI: never picked silently
    ph = make_stroke_phantom(shape=(40, 40, 40), spacing=(3.0, 3.0, 3.0), seed=0)
    mask = brain_mask(as_image(ph.image, 3.0), method="hdbet", min_volume_ml=1.0)
    assert sitk.GetArrayViewFromImage(mask).sum() == 16 ** 3


def test_failing_external_tool_is_a_case_error(bin_dir):
    install_tool(bin_dir, "mri_synthstrip", fail=True)
    ph = make_stroke_phantom(shape=(40, 40, 40), spacing=(3.0, 3.0, 3.0), seed=0)
    with pytest.raises(CaseError, match="mri_synthstrip failed .*model weights not found"):
        brain_mask(as_image(ph.image, 3.0), method="synthstrip")
