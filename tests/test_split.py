"""nnunet-ssl split: per-source 70/20/10, stratified by physical lesion side and volume, test held out."""
import csv
import json
from collections import Counter

import numpy as np
import pytest
import SimpleITK as sitk

from ct_inputs import phantom_images
from nnunet_ssl.cli.main import main
from nnunet_ssl.errors import UserError
from nnunet_ssl.splits import CaseStrata, assign_subsets, lesion_side

SIDES = ["left", "right", "left", "none", "right", "both", "left", "right", "none", "left"]
ORIENTATIONS = ["LPS", "RAS", "PIR", "LPS", "RAI"]


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "PIR", "ASL"])
@pytest.mark.parametrize("side", ["left", "right", "both", "none"])
def test_side_comes_from_physical_space(orientation, side):
    ct, _, lesion = phantom_images(orientation=orientation, side=side, seed=3)
    assert lesion_side(lesion, ct) == side
    assert lesion_side(lesion) == side  # midline from the field of view: the phantom head is centred


def test_mirrored_voxels_with_unchanged_direction_swap_the_side():
    """The same voxels with the x axis pointing the other way are the other hemisphere."""
    ct, _, lesion = phantom_images(side="left", seed=5)
    flipped = sitk.Flip(lesion, [True, False, False], flipAboutOrigin=False)
    flipped.CopyInformation(lesion)  # same array order, now mirrored in space
    assert lesion_side(flipped) == "right"
    d = np.array(lesion.GetDirection()).reshape(3, 3)
    d[:, 0] *= -1  # the array untouched, its x axis now pointing to the patient's right
    relabelled = sitk.Image(lesion)
    relabelled.SetDirection(d.ravel().tolist())
    assert lesion_side(relabelled) == "right"


def test_midline_is_the_head_not_the_field_of_view():
    """With the head off-centre in the scan, the field of view's centre would put a left lesion on the right."""
    ct, _, lesion = phantom_images(side="left", seed=6)
    pad = [0, 0, 0], [30, 0, 0]  # 30 voxels of air beyond the patient's left
    ct, lesion = sitk.ConstantPad(ct, *pad, -1000.0), sitk.ConstantPad(lesion, *pad, 0)
    assert lesion_side(lesion, ct) == "left"
    assert lesion_side(lesion) == "right"


def _write_dataset(raw, dataset_id=700, n_per_source=10):
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = raw / f"Dataset{dataset_id}_Lesions"
    rows, truth = [], {}
    for s, source in enumerate(["siteA", "siteB"]):
        for i in range(n_per_source):
            case = f"{source}_{i:02d}"
            side = SIDES[(i + 3 * s) % len(SIDES)]
            ct, _, lesion = phantom_images(orientation=ORIENTATIONS[i % len(ORIENTATIONS)], side=side,
                                           seed=100 * s + i)
            (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
            (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(ct, str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
            sitk.WriteImage(lesion, str(folder / "labelsTr" / f"{case}.nii.gz"))
            rows.append({"case_id": case, "source": source})
            truth[case] = side
    generate_dataset_json(str(folder), {0: "CT"}, {"background": 0, "lesion": 1}, len(rows), ".nii.gz",
                          dataset_name=folder.name)
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["case_id", "source"])
        w.writeheader()
        w.writerows(rows)
    return folder, truth


@pytest.fixture(scope="module")
def lesion_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    folder, truth = _write_dataset(root / "raw")
    return root, folder, truth


@pytest.fixture
def env(lesion_dataset, tmp_path, monkeypatch):
    root, folder, truth = lesion_dataset
    monkeypatch.setenv("nnUNet_raw", str(root / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return {"raw": folder, "out": tmp_path / "preprocessed" / folder.name, "truth": truth}


def _read(out):
    splits = json.loads((out / "splits_final.json").read_text(encoding="utf-8"))
    test = json.loads((out / "splits_test.json").read_text(encoding="utf-8"))
    with open(out / "splits_strata.csv", newline="", encoding="utf-8") as f:
        strata = {r["case_id"]: r for r in csv.DictReader(f)}
    return splits, test, strata


def test_split_per_source_with_test_held_out(env, capsys):
    before = {p: p.read_bytes() for p in env["raw"].rglob("*") if p.is_file()}
    assert main(["split", "-d", "700", "--seed", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out

    splits, test, strata = _read(env["out"])
    assert len(splits) == 1 and set(splits[0]) == {"train", "val"}
    train, val, held = set(splits[0]["train"]), set(splits[0]["val"]), set(test["test"])
    assert not (train & val) and not (train & held) and not (val & held)
    assert train | val | held == set(env["truth"])
    for source in ("siteA", "siteB"):  # 70/20/10 of each source's 10 cases
        sub = Counter(r["subset"] for r in strata.values() if r["source"] == source)
        assert sub == {"train": 7, "val": 2, "test": 1}
    assert {c: r["side"] for c, r in strata.items()} == env["truth"]  # physical sides, any orientation
    assert all(float(r["lesion_volume_ml"]) > 0 for r in strata.values() if r["side"] != "none")
    for c in held:
        assert c in printed
    assert before == {p: p.read_bytes() for p in env["raw"].rglob("*") if p.is_file()}


def test_seed_reproducible_and_refuses_overwrite(env, capsys):
    assert main(["split", "-d", "700", "--seed", "1", "--no-progress"]) == 0
    first = (env["out"] / "splits_final.json").read_text(encoding="utf-8")
    assert main(["split", "-d", "700", "--seed", "2", "--no-progress"]) == 2
    assert "splits_final.json exists; pass --force" in capsys.readouterr().err
    assert (env["out"] / "splits_final.json").read_text(encoding="utf-8") == first
    assert main(["split", "-d", "700", "--seed", "1", "--no-progress", "--force"]) == 0
    assert (env["out"] / "splits_final.json").read_text(encoding="utf-8") == first
    assert main(["split", "-d", "700", "--seed", "2", "--no-progress", "--force"]) == 0
    assert (env["out"] / "splits_final.json").read_text(encoding="utf-8") != first


def test_sources_csv_and_its_errors(env, tmp_path, capsys):
    sources = tmp_path / "sources.csv"
    sources.write_text("case_id,source\n" + "".join(f"{c},one\n" for c in env["truth"]), encoding="utf-8")
    assert main(["split", "-d", "700", "--sources", str(sources), "--no-progress"]) == 0
    _, _, strata = _read(env["out"])
    assert Counter(r["subset"] for r in strata.values()) == {"train": 14, "val": 4, "test": 2}

    sources.write_text("case_id,source\nsiteA_00,one\n", encoding="utf-8")
    assert main(["split", "-d", "700", "--sources", str(sources), "--no-progress", "--force"]) == 2
    assert "have no source in" in capsys.readouterr().err
    sources.write_text("name,centre\n", encoding="utf-8")
    assert main(["split", "-d", "700", "--sources", str(sources), "--no-progress", "--force"]) == 2
    assert "needs the columns case_id and source" in capsys.readouterr().err
    assert main(["split", "-d", "700", "--test-fraction", "0.5", "--val-fraction", "0.6", "--force"]) == 2
    assert "sum below 1" in capsys.readouterr().err


def test_every_stratum_gets_its_share():
    """Strata of any size are represented in each subset within one or two cases of their share."""
    rng = np.random.default_rng(0)
    sides = rng.choice(["none", "left", "right", "both"], p=[0.2, 0.35, 0.35, 0.1], size=87)
    cases = [CaseStrata(f"c{i:03d}", "s", str(side), 0.0, int(rng.integers(1, 4)) if side != "none" else 0)
             for i, side in enumerate(sides)]
    for seed in range(5):
        subsets = assign_subsets(cases, 0.1, 0.2, seed)
        counts = Counter(subsets.values())
        assert counts == {"test": 9, "val": 17, "train": 61}
        for key in {(c.side, c.volume_bin) for c in cases}:
            members = [c for c in cases if (c.side, c.volume_bin) == key]
            n_test = sum(subsets[c.case_id] == "test" for c in members)
            n_val = sum(subsets[c.case_id] == "val" for c in members)
            assert abs(n_test - len(members) * 9 / 87) < 1
            assert abs(n_val - len(members) * 17 / 87) < 2


def test_tiny_source_keeps_a_training_case():
    cases = [CaseStrata(f"c{i}", "s", "left", 1.0, 1) for i in range(2)]
    assert Counter(assign_subsets(cases, 0.4, 0.4).values()) == {"train": 1, "val": 1}
    with pytest.raises(UserError, match="sum below 1"):
        from nnunet_ssl.splits import make_split
        make_split(700, 0.6, 0.6)
