"""The ASPECTS-zone pretext task with real nnU-Net commands, on the tiny phantom dataset:

prepare-aspects -> plan-target (the zone dataset gets the lesion dataset's plans) -> stock nnU-Net
training on the zones -> nnunet-ssl-transfer of the stock checkpoint -> stock nnUNetv2_train
-pretrained_weights on the lesions.

docs/aspects.md plans the zone and the lesion dataset from the SSL dataset's plans; here the lesion
dataset's plans (planned and preprocessed already) play that part, which keeps the test short.
"""
import json

import pytest
import torch

from conftest import bin_path, run_command

pytestmark = pytest.mark.slow

BUDGET = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1,
          "final_validation": False}


def _with_budget(folder, plans_name, new_name):
    """A copy of the plans under ``new_name`` with the tiny training budget (same preprocessed data)."""
    plans = json.loads((folder / f"{plans_name}.json").read_text(encoding="utf-8"))
    plans["plans_name"] = new_name
    plans["configurations"]["3d_fullres"]["budget"] = dict(BUDGET)
    (folder / f"{new_name}.json").write_text(json.dumps(plans), encoding="utf-8")
    return new_name


def test_zone_pretraining_transfers_into_lesion_finetuning(nnunet_env, tmp_path):
    from nnunet_ssl.cli.main import main
    from nnunet_ssl.cli.transfer import main as transfer_main
    from nnunet_ssl.target_plans import plan_target

    root, env = nnunet_env["root"], nnunet_env["env"]
    zones = root / "raw" / "Dataset515_Zones"
    # the lesion dataset's images, unlabelled, are the pretext data
    assert main(["prepare-aspects", str(root / "raw" / "Dataset501_Tiny"), str(zones),
                 "--synthetic-atlas-shape", "32", "40", "40", "--no-progress"]) == 0
    labels = json.loads((zones / "dataset.json").read_text(encoding="utf-8"))["labels"]
    assert len(labels) == 21 and len(list((zones / "labelsTr").iterdir())) >= 4

    shared = plan_target(515, 501, num_processes=1, verify=False)  # integrity: tests/test_prepare_aspects.py
    zone_plans = _with_budget(root / "preprocessed" / "Dataset515_Zones", shared.plans_name, "nnUNetPlans_zones")
    run_command([bin_path("nnUNetv2_train"), "515", "3d_fullres", "all", "-tr", "nnUNetTrainerBudget",
                 "-p", zone_plans, "-device", "cpu"], env)
    checkpoint = (root / "results" / "Dataset515_Zones" / f"nnUNetTrainerBudget__{zone_plans}__3d_fullres"
                  / "fold_all" / "checkpoint_final.pth")
    pretext = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert "ssl" not in pretext and pretext["trainer_name"] == "nnUNetTrainerBudget"  # a stock checkpoint

    lesion_plans = _with_budget(root / "preprocessed" / "Dataset501_Tiny", "nnUNetPlans", "nnUNetPlans_aspects")
    weights = tmp_path / "zones_encoder.pth"
    assert transfer_main([str(checkpoint), "-d", "501", "-p", lesion_plans, "-o", str(weights)]) == 0
    transferred = torch.load(weights, weights_only=False)["network_weights"]
    encoder = [k for k in transferred if k.startswith("encoder.")]
    assert encoder and all(torch.equal(transferred[k], pretext["network_weights"][k]) for k in encoder)

    proc = run_command([bin_path("nnUNetv2_train"), "501", "3d_fullres", "0", "-tr", "nnUNetTrainerBudget",
                        "-p", lesion_plans, "-device", "cpu", "-pretrained_weights", str(weights)], env)
    assert "Loading pretrained weights from file" in proc.stdout
    tuned = root / "results" / "Dataset501_Tiny" / f"nnUNetTrainerBudget__{lesion_plans}__3d_fullres" / "fold_0"
    assert (tuned / "checkpoint_final.pth").is_file()
