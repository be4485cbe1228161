"""The demo's output folder: --force removes what the demo wrote and nothing that only shares a name."""
from nnunet_ssl.cli.main import main
from nnunet_ssl.demo import check_output_folder
from readonly import read_only


def _demo_leftovers(out):
    """What an earlier demo run leaves behind, beside the user's own things."""
    made = [out / "nnUNet_raw" / "Dataset990_DemoSSL" / "dataset.json",
            out / "nnUNet_preprocessed" / "Dataset991_DemoStroke" / "nnUNetPlans.json",
            out / "nnUNet_results" / "Dataset990_DemoSSL" / "x" / "checkpoint_final.pth",
            out / "predictions" / "pretrained" / "case.nii.gz", out / "evaluation" / "scratch" / "s.json",
            out / "logs" / "pretrain.log", out / "pretrained_encoder.pth", out / "demo_summary.json"]
    mine = [out / "nnUNet_raw" / "Dataset123_Mine" / "dataset.json", out / "evaluation" / "my_results.csv",
            out / "logs" / "my_notes.txt", out / "predictions" / "mine" / "p.nii.gz", out / "notes.md"]
    for p in made + mine:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    return made, mine


def test_force_removes_only_the_demos_own_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    made, mine = _demo_leftovers(out)
    assert main(["demo", "-o", str(out)]) == 2  # not empty: refused without --force
    assert "--force" in capsys.readouterr().err
    assert all(p.exists() for p in made + mine)
    check_output_folder(out, force=True)
    assert not any(p.exists() for p in made)
    assert all(p.read_text() == "x" for p in mine)
    assert not (out / "nnUNet_raw" / "Dataset990_DemoSSL").exists()
    assert not (out / "nnUNet_results" / "Dataset990_DemoSSL").exists()


def test_output_that_is_a_file_or_read_only(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["demo", "-o", str(tmp_path / "afile")]) == 2
    assert "not a folder" in capsys.readouterr().err
    with read_only(tmp_path / "locked") as locked:
        assert main(["demo", "-o", str(locked / "demo")]) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err and "Traceback" not in err
