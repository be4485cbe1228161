"""``nnunet-ssl evaluate`` and ``nnunet-ssl compare`` on small synthetic label maps written with SimpleITK.

Every mask is a box, so Dice, volumes and HD95 are known by hand. Spacing is
(3, 1, 0.5) mm in numpy order (axis 0, 1, 2), i.e. (0.5, 1, 3) in ITK order.
"""
import csv
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy import stats as sps

from nnunet_ssl.cli.main import main
from readonly import read_only

SPACING = (3.0, 1.0, 0.5)        # numpy order
VOXEL_ML = 3.0 * 1.0 * 0.5 / 1000
SHAPE = (10, 24, 24)
REPO = Path(__file__).resolve().parents[1]


def write_mask(path, array, spacing=SPACING, origin=(0.0, 0.0, 0.0), dtype=np.uint8):
    image = sitk.GetImageFromArray(np.asarray(array).astype(dtype))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def box(start, size, shape=SHAPE):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return mask


def case_boxes():
    """Eight cases with boxes of different sizes and one case without a lesion."""
    boxes = {f"case_{i}": ((2, 4 + i % 3, 5), (3 + i % 4, 5 + i, 4 + i % 5)) for i in range(8)}
    boxes["case_empty"] = None
    return boxes


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Ground truth and three prediction runs: eroded (last axis-1 row removed), dilated, shifted.

    - eroded: the box minus its last layer along axis 1;
    - dilated: one step of 6-connected dilation;
    - shifted: the box moved by 2 voxels along axis 2 (1 mm), plus a false
      positive in the empty case.
    """
    root = tmp_path_factory.mktemp("data")
    dirs = {name: root / name for name in ("gt", "eroded", "dilated", "shifted")}
    for d in dirs.values():
        d.mkdir()
    for case, spec in case_boxes().items():
        true = box(*spec) if spec else np.zeros(SHAPE, bool)
        eroded = true.copy()
        if spec:
            (s0, s1, s2), (n0, n1, n2) = spec
            eroded[:, s1 + n1 - 1, :] = False
        dilated = ndimage.binary_dilation(true)
        shifted = np.roll(true, 2, axis=2) if spec else box((1, 1, 1), (2, 2, 2))
        for name, mask in (("gt", true), ("eroded", eroded), ("dilated", dilated), ("shifted", shifted)):
            write_mask(dirs[name] / f"{case}.nii.gz", mask)
    (dirs["eroded"] / "plans.json").write_text("{}", encoding="utf-8")  # other files in a prediction folder are ignored
    return dirs


@pytest.fixture(scope="module")
def evaluated(dataset, tmp_path_factory):
    """The three runs evaluated once into their own output folders."""
    out = tmp_path_factory.mktemp("eval")
    before = digest(dataset["gt"])
    for name in ("eroded", "dilated", "shifted"):
        assert main(["evaluate", str(dataset[name]), str(dataset["gt"]), "-o", str(out / name)]) == 0
    assert digest(dataset["gt"]) == before
    return out


def test_evaluate_per_case_values_by_hand(evaluated):
    boxes = case_boxes()
    rows = {r["case"]: r for r in read_rows(evaluated / "dilated" / "evaluation_per_case.csv")}
    assert set(rows) == set(boxes)
    assert list(rows["case_0"]) == ["case", "label", "dice", "hd95_mm", "avd_ml", "volume_pred_ml",
                                    "volume_true_ml", "lesions_pred", "lesions_true"]
    for case, spec in boxes.items():
        if spec is None:
            continue
        a, b, c = spec[1]
        true_n, dilated_n = a * b * c, a * b * c + 2 * (a * b + b * c + a * c)
        row = rows[case]
        assert float(row["dice"]) == pytest.approx(2 * true_n / (true_n + dilated_n), rel=1e-6)
        assert float(row["volume_true_ml"]) == pytest.approx(true_n * VOXEL_ML, rel=1e-6)
        assert float(row["avd_ml"]) == pytest.approx((dilated_n - true_n) * VOXEL_ML, rel=1e-6)
        assert row["label"] == "1" and row["lesions_pred"] == row["lesions_true"] == "1"
    # the lesion-free case: both empty
    assert (rows["case_empty"]["dice"], rows["case_empty"]["hd95_mm"]) == ("1", "0")


def test_evaluate_hd95_in_mm_and_nan_in_summary(evaluated):
    rows = {r["case"]: r for r in read_rows(evaluated / "shifted" / "evaluation_per_case.csv")}
    # a 2-voxel shift along axis 2 (0.5 mm voxels): HD95 = 1 mm in every case with a lesion
    assert all(float(rows[c]["hd95_mm"]) == pytest.approx(1.0) for c in rows if c != "case_empty")
    # false positive on an empty reference: Dice 0 and HD95 undefined (empty cell)
    assert rows["case_empty"]["dice"] == "0" and rows["case_empty"]["hd95_mm"] == ""
    summary = json.loads((evaluated / "shifted" / "evaluation_summary.json").read_text(encoding="utf-8"))
    label = summary["labels"]["1"]
    assert label["metrics"]["hd95_mm"]["n"] == 8 and label["metrics"]["hd95_mm"]["n_nan"] == 1
    assert label["metrics"]["hd95_mm"]["median"] == pytest.approx(1.0)
    assert label["metrics"]["dice"]["n"] == 9
    assert label["n_empty_ground_truth"] == 1 and label["n_cases"] == 9
    vp = [float(rows[c]["volume_pred_ml"]) for c in sorted(rows)]
    vt = [float(rows[c]["volume_true_ml"]) for c in sorted(rows)]
    assert label["volume_agreement"]["spearman_rho"] == pytest.approx(sps.spearmanr(vp, vt).statistic, rel=1e-6)
    assert label["volume_agreement"]["icc_3_1"] == pytest.approx(
        2 * np.cov(vp, vt)[0, 1] / (np.var(vp, ddof=1) + np.var(vt, ddof=1)), rel=1e-5)
    assert summary["settings"]["n_cases"] == 9 and summary["settings"]["min_lesion_ml"] == 0


def test_min_lesion_filter_from_the_command_line(tmp_path, capsys):
    gt, pred, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "out"
    gt.mkdir(), pred.mkdir()
    shape = (24, 45, 45)
    spacing = (2.0, 1.0, 0.5)  # 1 mm^3 voxels
    small, large = box((2, 2, 2), (10, 10, 20), shape), box((2, 20, 20), (10, 20, 20), shape)  # 2 mL, 4 mL
    write_mask(gt / "c1.nii.gz", small | large, spacing)
    write_mask(pred / "c1.nii.gz", large, spacing)
    assert main(["evaluate", str(pred), str(gt), "-o", str(out), "--min-lesion-ml", "3"]) == 0
    row = read_rows(out / "evaluation_per_case.csv")[0]
    assert float(row["volume_true_ml"]) == pytest.approx(4.0) and float(row["dice"]) == 1.0
    assert json.loads((out / "evaluation_summary.json").read_text(encoding="utf-8"))["settings"]["min_lesion_ml"] == 3.0
    assert "under 3 mL removed" in capsys.readouterr().out


def test_multi_label_is_evaluated_per_label(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    true = np.zeros(SHAPE, np.uint8)
    true[box((2, 2, 2), (4, 4, 4))] = 1
    true[box((2, 12, 12), (4, 4, 4))] = 2
    guess = np.zeros(SHAPE, np.uint8)
    guess[box((2, 2, 2), (4, 4, 4))] = 1
    guess[box((3, 12, 12), (4, 4, 4))] = 2  # label 2 shifted one voxel along axis 0
    write_mask(gt / "a.nii.gz", true)
    write_mask(pred / "a.nii.gz", guess)
    only_one = np.zeros(SHAPE, np.uint8)
    only_one[box((2, 2, 2), (3, 3, 3))] = 1
    write_mask(gt / "b.nii.gz", only_one)
    write_mask(pred / "b.nii.gz", only_one)
    assert main(["evaluate", str(pred), str(gt)]) == 0
    rows = {(r["case"], r["label"]): r for r in read_rows(pred / "evaluation_per_case.csv")}
    assert set(rows) == {("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")}
    assert float(rows["a", "1"]["dice"]) == 1.0
    assert float(rows["a", "2"]["dice"]) == pytest.approx(0.75)           # 2 * 48 / 128
    assert float(rows["a", "2"]["hd95_mm"]) == pytest.approx(3.0)         # one 3 mm voxel; see metric tests
    assert float(rows["b", "2"]["dice"]) == 1.0 and rows["b", "2"]["volume_true_ml"] == "0"  # absent: both empty
    summary = json.loads((pred / "evaluation_summary.json").read_text(encoding="utf-8"))
    assert sorted(summary["labels"]) == ["1", "2"] and summary["settings"]["labels"] == [1, 2]
    assert main(["evaluate", str(pred), str(gt), "--labels", "2", "-o", str(tmp_path / "l2")]) == 0
    assert {r["label"] for r in read_rows(tmp_path / "l2" / "evaluation_per_case.csv")} == {"2"}


@pytest.fixture
def pair(tmp_path):
    """A folder pair with one good case; tests add a broken one."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    write_mask(gt / "good.nii.gz", box((2, 2, 2), (3, 3, 3)))
    write_mask(pred / "good.nii.gz", box((2, 2, 2), (3, 3, 3)))
    return gt, pred


def run_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet-ssl ") and "error:" in err
    return err


@pytest.mark.parametrize("kind, pred_kwargs, expect", [
    ("shape", {"array": np.zeros((10, 24, 25), bool)}, "size"),
    ("spacing", {"spacing": (3.0, 1.0, 0.6)}, "spacing"),
    ("origin", {"origin": (0.0, 5.0, 0.0)}, "origin"),
])
def test_geometry_mismatch_names_the_case(pair, capsys, kind, pred_kwargs, expect):
    gt, pred = pair
    write_mask(gt / "bad.nii.gz", box((2, 2, 2), (3, 3, 3)))
    array = pred_kwargs.pop("array", box((2, 2, 2), (3, 3, 3)))
    write_mask(pred / "bad.nii.gz", array, **pred_kwargs)
    err = run_error(["evaluate", str(pred), str(gt)], capsys)
    assert "Case bad" in err and expect in err
    assert not (pred / "evaluation_per_case.csv").exists()


def test_geometry_within_tolerance_is_accepted(pair):
    gt, pred = pair
    write_mask(gt / "near.nii.gz", box((2, 2, 2), (3, 3, 3)))
    # 0.0004 mm off: survives float32 storage, within the 0.001 mm tolerance
    write_mask(pred / "near.nii.gz", box((2, 2, 2), (3, 3, 3)), spacing=(3.0, 1.0, 0.5004))
    assert main(["evaluate", str(pred), str(gt)]) == 0


def test_missing_predictions_error_or_allow_missing(pair, capsys, tmp_path):
    gt, pred = pair
    for name in ("lost_1", "lost_2"):
        write_mask(gt / f"{name}.nii.gz", box((2, 2, 2), (3, 3, 3)))
    err = run_error(["evaluate", str(pred), str(gt)], capsys)
    assert "2 ground-truth case(s) have no prediction" in err and "lost_1, lost_2" in err
    assert "--allow-missing" in err
    assert main(["evaluate", str(pred), str(gt), "--allow-missing", "-o", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "evaluation_summary.json").read_text(encoding="utf-8"))
    assert summary["settings"]["cases_without_prediction"] == ["lost_1", "lost_2"]
    assert summary["settings"]["n_cases"] == 1


def test_prediction_without_ground_truth_is_an_error(pair, capsys):
    gt, pred = pair
    write_mask(pred / "stray.nii.gz", box((2, 2, 2), (3, 3, 3)))
    err = run_error(["evaluate", str(pred), str(gt), "--allow-missing"], capsys)
    assert "have no ground truth" in err and "stray" in err


def test_empty_folders_are_errors(pair, capsys, tmp_path):
    gt, pred = pair
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No prediction files ending in '.nii.gz'" in run_error(["evaluate", str(empty), str(gt)], capsys)
    assert "No ground truth files" in run_error(["evaluate", str(pred), str(empty)], capsys)
    assert "is not a folder" in run_error(["evaluate", str(tmp_path / "nope"), str(gt)], capsys)
    # a different file ending finds nothing either, and says how to fix it
    assert "-fe/--file-ending" in run_error(["evaluate", str(pred), str(gt), "-fe", ".mha"], capsys)


def test_non_label_maps_are_refused(pair, capsys):
    gt, pred = pair
    write_mask(gt / "prob.nii.gz", box((2, 2, 2), (3, 3, 3)))
    write_mask(pred / "prob.nii.gz", box((2, 2, 2), (3, 3, 3)) * 0.6, dtype=np.float32)
    err = run_error(["evaluate", str(pred), str(gt)], capsys)
    assert "non-integer values" in err and "prob.nii.gz" in err


def test_output_inside_ground_truth_is_refused(pair, capsys):
    gt, pred = pair
    before = digest(gt)
    err = run_error(["evaluate", str(pred), str(gt), "-o", str(gt / "results")], capsys)
    assert "inside the ground-truth folder" in err
    assert digest(gt) == before


def test_bad_options_are_refused(pair, capsys):
    gt, pred = pair
    assert "--min-lesion-ml" in run_error(["evaluate", str(pred), str(gt), "--min-lesion-ml", "-1"], capsys)
    assert "needs --min-lesion-ml" in run_error(["evaluate", str(pred), str(gt), "--filter-prediction"], capsys)
    assert "background" in run_error(["evaluate", str(pred), str(gt), "--labels", "0"], capsys)


def test_compare_matches_scipy_and_renders_report(evaluated, tmp_path):
    from matplotlib.image import imread

    out = tmp_path / "cmp"
    runs = [str(evaluated / n) for n in ("eroded", "dilated", "shifted")]
    assert main(["compare", *runs, "-o", str(out)]) == 0
    per_run = {n: {r["case"]: r for r in read_rows(evaluated / n / "evaluation_per_case.csv")}
               for n in ("eroded", "dilated", "shifted")}
    tests = read_rows(out / "paired_tests.csv")
    assert len(tests) == 3 * 3  # 3 pairs x 3 metrics
    cases = sorted(per_run["eroded"])
    for t in tests:
        if t["metric"] != "dice":
            continue
        a = [float(per_run[t["run_a"]][c]["dice"]) for c in cases]
        b = [float(per_run[t["run_b"]][c]["dice"]) for c in cases]
        ref = sps.wilcoxon(a, b)
        assert float(t["p_wilcoxon"]) == pytest.approx(ref.pvalue, rel=1e-6)
        assert float(t["p_shapiro"]) == pytest.approx(sps.shapiro(np.subtract(a, b)).pvalue, rel=1e-6)
        assert int(t["n"]) == 9
    # HD95 pairs leave out the case where the shifted run has an undefined HD95
    hd = [t for t in tests if t["metric"] == "hd95_mm" and "shifted" in (t["run_a"], t["run_b"])]
    assert {int(t["n"]) for t in hd} == {8}

    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| Run | Dice mean | Dice median (IQR) |" in report
    assert "9 case(s) shared by every run" in report
    images = [line[line.index("(") + 1:-1] for line in report.splitlines() if line.startswith("![")]
    assert "boxplot_dice_label1.png" in images and "volume_scatter_label1.png" in images
    for name in images:
        pixels = imread(out / name)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.std() > 0
    table = read_rows(out / "summary_table.csv")
    assert [r["run"] for r in table] == ["eroded", "dilated", "shifted"]
    assert float(table[2]["hd95_mm_median"]) == pytest.approx(1.0)


@pytest.fixture
def csv_runs(tmp_path):
    """Three per-case CSVs written directly; run C lacks case c11."""
    a = [0.81, 0.75, 0.92, 0.66, 0.88, 0.79, 0.71, 0.85, 0.90, 0.62, 0.77, 0.83]
    dice = {
        "A": a,
        "B": [round(v - 0.01 * (i + 1), 4) for i, v in enumerate(a)],   # A better by distinct amounts
        "C": [round(v - 0.2 - 0.003 * i, 4) for i, v in enumerate(a)],
    }
    paths = {}
    for name, values in dice.items():
        path = tmp_path / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case", "label", "dice", "hd95_mm", "avd_ml", "volume_pred_ml", "volume_true_ml",
                        "lesions_pred", "lesions_true"])
            for i, d in enumerate(values):
                if name == "C" and i == 11:
                    continue
                w.writerow([f"c{i:02d}", 1, d, 10 * (1 - d), 5 * (1 - d), 20 + i * d, 20 + i, 1, 1])
        paths[name] = path
    return paths, dice


def test_compare_csv_runs_drops_unshared_cases(csv_runs, tmp_path, capsys):
    paths, dice = csv_runs
    out = tmp_path / "cmp"
    assert main(["compare", str(paths["A"]), str(paths["B"]), str(paths["C"]), "--names", "SSL", "scratch",
                 "other", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "11 shared case(s); dropped SSL: 1, scratch: 1, other: 0" in printed
    tests = {(t["run_a"], t["run_b"]): t for t in read_rows(out / "paired_tests.csv") if t["metric"] == "dice"}
    ref = sps.wilcoxon(dice["A"][:11], dice["B"][:11])
    assert float(tests["SSL", "scratch"]["p_wilcoxon"]) == pytest.approx(ref.pvalue, rel=1e-6)
    # A beats B in every case: all differences positive, so r = +1 and p = 2 / 2^11 (exact test)
    assert float(tests["SSL", "scratch"]["rank_biserial"]) == 1.0
    assert ref.pvalue == pytest.approx(2 / 2 ** 11)
    assert tests["SSL", "scratch"]["mark"] == "***"
    # Holm over the three pairs, recomputed here from the raw p-values
    raw = sorted((float(t["p_wilcoxon"]), key) for key, t in tests.items())
    running, expected = 0.0, {}
    for rank, (p, key) in enumerate(raw):
        running = max(running, min(1.0, (3 - rank) * p))
        expected[key] = running
    for key, t in tests.items():
        assert float(t["p_holm"]) == pytest.approx(expected[key], rel=1e-6)


def test_compare_bad_input(csv_runs, tmp_path, capsys):
    paths, _ = csv_runs
    a = str(paths["A"])
    assert "at least two runs" in run_error(["compare", a], capsys)
    assert "one per run" in run_error(["compare", a, str(paths["B"]), "--names", "x"], capsys)
    assert "holds no evaluation_per_case.csv" in run_error(["compare", a, str(tmp_path)], capsys)
    other = tmp_path / "other.csv"
    other.write_text("case,label,dice,hd95_mm,avd_ml,volume_pred_ml,volume_true_ml\nzz,1,0.5,1,1,1,1\n", encoding="utf-8")
    assert "share no case" in run_error(["compare", a, str(other)], capsys)
    bad = tmp_path / "bad.csv"
    bad.write_text("case,dice\nx,0.5\n", encoding="utf-8")
    assert "lacks the column(s) label" in run_error(["compare", a, str(bad)], capsys)


def test_real_command_in_subprocess(dataset, tmp_path):
    out = tmp_path / "sub"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "nnunet_ssl.cli.main", "evaluate", str(dataset["dilated"]), str(dataset["gt"]),
         "-o", str(out), "-j", "2"], capture_output=True, text=True, encoding="utf-8", errors="replace", cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Evaluated 9 case(s)" in proc.stdout
    rows = read_rows(out / "evaluation_per_case.csv")
    assert [r["case"] for r in rows] == sorted(case_boxes())
    assert not math.isnan(json.loads((out / "evaluation_summary.json").read_text(encoding="utf-8"))
                          ["labels"]["1"]["volume_agreement"]["icc_3_1"])


def test_compare_warns_when_runs_used_different_filters(dataset, evaluated, tmp_path, capsys):
    filtered = tmp_path / "eroded_filtered"
    assert main(["evaluate", str(dataset["eroded"]), str(dataset["gt"]), "-o", str(filtered),
                 "--min-lesion-ml", "0.1"]) == 0
    assert main(["compare", str(evaluated / "eroded"), str(filtered), "-o", str(tmp_path / "cmp")]) == 0
    assert "different min_lesion_ml" in capsys.readouterr().out
    report = (tmp_path / "cmp" / "report.md").read_text(encoding="utf-8")
    assert "> Warning: The runs were evaluated with different min_lesion_ml" in report


def test_command_modules_import_nothing_heavy():
    # `nnunet-ssl evaluate --help` must answer at once: heavy imports belong inside run().
    code = ("import sys; import nnunet_ssl.cli.evaluate, nnunet_ssl.cli.compare; "
            "print([m for m in ('SimpleITK', 'scipy', 'matplotlib', 'tqdm') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_label_absent_everywhere_is_undefined_with_a_warning(pair, capsys, tmp_path):
    gt, pred = pair
    out = tmp_path / "absent"
    assert main(["evaluate", str(pred), str(gt), "--labels", "1", "5", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Warning: label 5" in printed and "undefined" in printed
    rows = {r["label"]: r for r in read_rows(out / "evaluation_per_case.csv")}
    assert rows["1"]["dice"] == "1"  # the present label keeps its value
    assert rows["5"]["dice"] == "" and rows["5"]["hd95_mm"] == ""  # not the both-empty 1.0 / 0.0
    summary = json.loads((out / "evaluation_summary.json").read_text(encoding="utf-8"))
    five = summary["labels"]["5"]
    assert five["absent_everywhere"] is True and five["metrics"]["dice"]["mean"] is None
    assert five["metrics"]["dice"]["n"] == 0 and five["metrics"]["dice"]["n_nan"] == 1
    assert summary["labels"]["1"]["absent_everywhere"] is False
    assert any("label 5" in w for w in summary["warnings"])


@pytest.mark.parametrize("shape", [(24, 24), (2, 10, 24, 24)])
def test_2d_and_4d_maps_are_refused(pair, capsys, shape):
    gt, pred = pair
    for folder in (gt, pred):  # isVector=False: a 4th array axis is a 4th dimension, not vector components
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.uint8), isVector=False), str(folder / "odd.nii.gz"))
    err = run_error(["evaluate", str(pred), str(gt)], capsys)
    assert "odd.nii.gz" in err and f"{len(shape)}D" in err and "3D" in err


def test_unwritable_output_is_a_clear_error(pair, capsys, tmp_path):
    gt, pred = pair
    (tmp_path / "afile").write_text("x")
    assert "is a file" in run_error(["evaluate", str(pred), str(gt), "-o", str(tmp_path / "afile")], capsys)
    with read_only(tmp_path / "locked") as locked:
        assert "cannot write" in run_error(["evaluate", str(pred), str(gt), "-o", str(locked)], capsys)
        assert "cannot write" in run_error(["evaluate", str(pred), str(gt), "-o", str(locked / "sub")], capsys)


def test_compare_refuses_the_same_run_twice(csv_runs, tmp_path, capsys, monkeypatch):
    paths, _ = csv_runs
    monkeypatch.chdir(tmp_path)  # a regression would write ./comparison
    a = str(paths["A"])
    assert "the same run" in run_error(["compare", a, a], capsys)
    # the folder and its CSV are the same run too
    folder = tmp_path / "evalA"
    folder.mkdir()
    (folder / "evaluation_per_case.csv").write_bytes(paths["A"].read_bytes())
    assert "the same run" in run_error(["compare", str(folder), str(folder / "evaluation_per_case.csv")], capsys)


def test_compare_output_that_is_a_file_or_unwritable(csv_runs, tmp_path, capsys):
    paths, _ = csv_runs
    (tmp_path / "afile").write_text("x")
    a, b = str(paths["A"]), str(paths["B"])
    assert "is a file" in run_error(["compare", a, b, "-o", str(tmp_path / "afile")], capsys)
    with read_only(tmp_path / "locked") as locked:
        assert "cannot write" in run_error(["compare", a, b, "-o", str(locked / "cmp")], capsys)
        assert "cannot write" in run_error(["compare", a, b, "-o", str(locked)], capsys)
