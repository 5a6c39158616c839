"""``clips-nnunet import-tmtv`` end to end on tiny data (integration, CPU): TMTV-Net-format weights built in the
test (random, TMTV-Net's key names and shapes) -> import -> ``nnUNetv2_predict`` (stage 1 from the two fold models,
then the refiner with ``-prev_stage_predictions``) gives the probabilities that nnU-Net's predictor gives with our
networks built directly and the weights mapped in memory; the stacking file, ``-pretrained_weights`` (nnU-Net's
``load_pretrained_weights``) and the published model as teacher (``clips-nnunet score --predict``); bad files give
one error line, exit 2, nothing written; a stacking file of another model is refused by scoring.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from clips_nnunet.io_utils import read_json
from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset
from clips_nnunet.tmtv import weights as iw
from clips_nnunet.tmtv.network import TMTVRefiner, TMTVUNet
from nnunet_helpers import nnunet_environment, run_cli
from test_import_tmtv import random_state_dict, refiner_spec, stage1_spec

pytestmark = pytest.mark.integration
DATASET_ID = 994
CASES = ("case_0000", "case_0001")


def _ensemble():
    members = [random_state_dict(stage1_spec(), seed=20 + j) for j in range(2)]
    sd = {f"base_models.{j}.{k}": v for j, m in enumerate(members) for k, v in m.items()}
    sd["staking_blocks.weight"] = torch.tensor([0.3, -0.2, 0.7, 1.1]).view(2, 2, 1, 1, 1)
    sd["staking_blocks.bias"] = torch.tensor([0.1, -0.1])
    return members, sd


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    base = tmp_path_factory.mktemp("import_tmtv")
    env = nnunet_environment(base)
    raw = make_synthetic_raw_dataset(Path(env["nnUNet_raw"]), DATASET_ID)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "--no_pp", "-npfp", "1"],
            {**env, "nnUNet_n_proc_DA": "1"})
    run_cli(["clips-nnunet", "plan-tmtv", "-d", str(DATASET_ID), "--clamp-patch-to-median"], env)
    members, ensemble = _ensemble()
    refiner = random_state_dict(refiner_spec(), seed=30)
    models = base / "models"
    models.mkdir()
    torch.save(ensemble, models / "e_latest.model")  # TMTV-Net: torch.save(model.state_dict())
    torch.save(refiner, models / "r_latest.model")
    proc = run_cli(["clips-nnunet", "import-tmtv", str(models), "-d", str(DATASET_ID)], env)
    inputs = base / "inputs"
    inputs.mkdir()
    for case in CASES:
        for c in (0, 1):
            shutil.copy(raw / "imagesTr" / f"{case}_000{c}.nii.gz", inputs)
    return {"base": base, "env": env, "raw": raw, "members": members, "refiner": refiner, "models": models,
            "inputs": inputs, "stdout": proc.stdout,
            "pre": Path(env["nnUNet_preprocessed"]) / raw.name, "results": Path(env["nnUNet_results"]) / raw.name}


def _direct_prediction(imported, network, configuration, params, output, previous=None):
    """nnU-Net's predictor around our network built directly, with weights mapped in memory (nothing read from the
    imported folders)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(read_json(imported["pre"] / "nnUNetPlans.json"))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(network, plans, plans.get_configuration(configuration), params,
                                    read_json(imported["pre"] / "dataset.json"), "nnUNetTrainerTMTV", None)
    files = [[str(imported["inputs"] / f"{case}_000{c}.nii.gz") for c in (0, 1)] for case in CASES]
    output.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as nnUNetv2_predict with nnUNet_def_n_proc=1: the same summation order
    try:
        predictor.predict_from_files_sequential(files, [str(output / case) for case in CASES],
                                                save_probabilities=True, overwrite=True,
                                                folder_with_segs_from_prev_stage=previous)
    finally:
        torch.set_num_threads(threads)


def _assert_same(cli_dir: Path, direct_dir: Path):
    foreground = []
    for case in CASES:
        a = np.load(cli_dir / f"{case}.npz")["probabilities"]
        b = np.load(direct_dir / f"{case}.npz")["probabilities"]
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4, np.abs(a - b).max()
        sa = sitk.GetArrayFromImage(sitk.ReadImage(str(cli_dir / f"{case}.nii.gz")))
        sb = sitk.GetArrayFromImage(sitk.ReadImage(str(direct_dir / f"{case}.nii.gz")))
        assert np.array_equal(sa, sb)
        foreground.append(float((sa > 0).mean()))
    assert 0.0 < float(np.mean(foreground)) < 1.0, foreground  # a non-trivial prediction is compared


def test_import_writes_nnunet_folders(imported):
    res = imported["results"]
    s1, s2 = res / "nnUNetTrainerTMTV__nnUNetPlans__3d_tmtv", res / "nnUNetTrainerTMTV__nnUNetPlans__3d_tmtv_refine"
    for folder, folds in ((s1, ("0", "1")), (s2, ("all",))):
        assert read_json(folder / "plans.json") == read_json(imported["pre"] / "nnUNetPlans.json")
        assert read_json(folder / "dataset.json") == read_json(imported["pre"] / "dataset.json")
        for fold in folds:
            ckpt = torch.load(folder / f"fold_{fold}" / "checkpoint_final.pth", weights_only=False)
            assert ckpt["trainer_name"] == "nnUNetTrainerTMTV"
            assert ckpt["init_args"]["configuration"] == folder.name.split("__")[-1]
            assert ckpt["inference_allowed_mirroring_axes"] is None
    ckpt0 = torch.load(s1 / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert len(ckpt0) == 64  # 66 TMTV-Net tensors less UNetBase's unused output conv
    assert torch.equal(ckpt0["bottleneck.0.weight"],
                       imported["members"][0]["model.backbone.middle_block.ops.ops.0.ops.0.weight"])
    from clips_nnunet.tmtv.stacking import load_stacking_model
    layer, model, _ = load_stacking_model(s1 / "stacking_checkpoint_final.pth")
    assert (model.folder_name, model.folds, model.checkpoint) == (s1.name, [0, 1], "checkpoint_final.pth")
    assert layer.conv.weight.flatten().tolist() == pytest.approx([0.3, -0.2, 0.7, 1.1])
    assert layer.conv.bias.tolist() == pytest.approx([0.1, -0.1])
    # 2 fold models x 64 tensors + the refiner's 30 (TMTV-Net's 30, none dropped)
    assert "--stacking" in imported["stdout"] and "imported 158 tensors" in imported["stdout"]


def test_nnunet_predict_equals_our_networks_with_mapped_weights(imported, tmp_path):
    env, d = imported["env"], str(DATASET_ID)
    common = ["-d", d, "-tr", "nnUNetTrainerTMTV", "-device", "cpu", "--disable_tta", "--save_probabilities",
              "-npp", "1", "-nps", "1"]
    stage1_cli, refine_cli = tmp_path / "s1_cli", tmp_path / "s2_cli"
    run_cli(["nnUNetv2_predict", "-i", str(imported["inputs"]), "-o", str(stage1_cli), "-c", "3d_tmtv", "-f", "0",
             "1", *common], env)
    net = TMTVUNet(2, 2, deep_supervision=False).eval()
    params = [iw.map_state_dict(m, net, "member") for m in imported["members"]]
    _direct_prediction(imported, net, "3d_tmtv", params, tmp_path / "s1_direct")
    _assert_same(stage1_cli, tmp_path / "s1_direct")

    run_cli(["nnUNetv2_predict", "-i", str(imported["inputs"]), "-o", str(refine_cli), "-c", "3d_tmtv_refine",
             "-f", "all", "-prev_stage_predictions", str(stage1_cli), *common], env)
    refiner = TMTVRefiner(3, 2, n_image_channels=2).eval()
    _direct_prediction(imported, refiner, "3d_tmtv_refine",
                       [iw.map_state_dict(imported["refiner"], refiner, "refiner")], tmp_path / "s2_direct",
                       previous=str(stage1_cli))
    _assert_same(refine_cli, tmp_path / "s2_direct")


def test_imported_checkpoint_starts_a_finetuning(imported):
    """``nnUNetv2_train ... -tr nnUNetTrainerTMTVFinetune -pretrained_weights <fold checkpoint>`` loads it with
    nnU-Net's ``load_pretrained_weights`` into the training network (deep supervision on)."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from clips_nnunet.tmtv.recipe import nnUNetTrainerTMTVFinetune

    plans = PlansManager(read_json(imported["pre"] / "nnUNetPlans.json"))
    net = nnUNetTrainerTMTVFinetune.build_network_architecture(plans, plans.get_configuration("3d_tmtv"), 2, 2,
                                                               enable_deep_supervision=True)
    fold0 = imported["results"] / "nnUNetTrainerTMTV__nnUNetPlans__3d_tmtv" / "fold_0" / "checkpoint_final.pth"
    load_pretrained_weights(net, str(fold0))
    expected = iw.map_state_dict(imported["members"][0], TMTVUNet(2, 2), "member 0")
    state = net.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_published_model_as_teacher(imported, tmp_path):
    """``clips-nnunet score --predict`` on the whole imported model (stage 1 stacked, then the refiner) writes the
    difficulty CSV (1 - Dice) that nnUNetTrainerCLTransferTeacher reads."""
    raw, out = imported["raw"], tmp_path / "difficulty.csv"
    stage1 = imported["results"] / "nnUNetTrainerTMTV__nnUNetPlans__3d_tmtv"
    folder = imported["results"] / "nnUNetTrainerTMTV__nnUNetPlans__3d_tmtv_refine"
    run_cli(["clips-nnunet", "score", str(folder), "--predict", "-i", str(raw / "imagesTr"), "-l",
             str(raw / "labelsTr"), "-f", "all", "--stacking", str(stage1 / "stacking_checkpoint_final.pth"),
             "-o", str(out)], imported["env"])
    with open(out, newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert len(rows) == 12
    from clips_nnunet.curriculum.difficulty import read_difficulty_csv
    assert set(read_difficulty_csv(out, sorted(rows))) == set(rows)  # the curriculum trainers read it
    for r in rows.values():
        assert float(r["difficulty"]) == pytest.approx(1.0 - float(r["dice"]))
        assert 0.0 <= float(r["difficulty"]) <= 1.0


def _bad_models(base: Path, name: str, change) -> Path:
    models = base / name
    models.mkdir()
    sd = random_state_dict(refiner_spec(), seed=31)
    change(sd)
    torch.save(sd, models / "r_latest.model")
    return models


@pytest.mark.parametrize("name, change, message", [
    ("shape", lambda sd: sd.update({"model.ops.5.ops.0.ops.0.weight": torch.zeros(3, 32, 1, 1, 1)}),
     "model.ops.5.ops.0.ops.0.weight has shape (3, 32, 1, 1, 1)"),
    ("key", lambda sd: sd.update({"model.ops.2.block_1.ops.0.ops.0.bias": torch.zeros(32)}),
     "no place in our refiner: model.ops.2.block_1.ops.0.ops.0.bias"),
])
def test_wrong_key_or_shape_is_one_line_exit_2_nothing_written(imported, tmp_path, name, change, message):
    env = dict(imported["env"])
    env["nnUNet_results"] = str(tmp_path / "results")  # a fresh results root: nothing may appear in it
    models = _bad_models(tmp_path, name, change)
    proc = run_cli(["clips-nnunet", "import-tmtv", str(models), "-d", str(DATASET_ID)], env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "r_latest.model" in lines[0], proc.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*"))


def test_existing_model_is_not_replaced_without_overwrite(imported):
    proc = run_cli(["clips-nnunet", "import-tmtv", str(imported["models"]), "-d", str(DATASET_ID)], imported["env"],
                   check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr


def test_scoring_refuses_a_stacking_file_of_another_model(imported, tmp_path):
    stage1 = imported["results"] / "nnUNetTrainerTMTV__nnUNetPlans__3d_tmtv"
    other = imported["results"] / "nnUNetTrainerOther__nnUNetPlans__3d_fullres"
    other.mkdir()
    shutil.copy(stage1 / "plans.json", other)
    shutil.copy(stage1 / "dataset.json", other)
    proc = run_cli(["clips-nnunet", "score", str(other), "--predict", "-i", str(imported["raw"] / "imagesTr"),
                    "-l", str(imported["raw"] / "labelsTr"), "--stacking",
                    str(stage1 / "stacking_checkpoint_final.pth"), "-o", str(tmp_path / "d.csv")], imported["env"],
                   check=False)
    shutil.rmtree(other)
    assert proc.returncode == 2 and "not a stage of nnUNetTrainerOther__nnUNetPlans__3d_fullres" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "d.csv").exists()
