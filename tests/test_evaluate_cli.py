"""``clips-nnunet evaluate`` on small NIfTI folders with known answers."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from clips_nnunet.cli import main
from clips_nnunet.evaluation.evaluate import evaluate_folder
from nnunet_helpers import run_cli

SPACING_XYZ = (1.0, 2.0, 4.0)  # anisotropic; array spacing (z, y, x) = (4, 2, 1)
VOXEL_ML = 8 / 1000


def _write(arr: np.ndarray, path: Path, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0)) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def folders(tmp_path):
    pred, gt, pet = tmp_path / "pred", tmp_path / "labelsTs", tmp_path / "imagesTs"
    shape = (8, 10, 12)
    # case_a: truth 2x2x2 block, prediction covers half of it -> Dice 2*4/12
    t = np.zeros(shape, np.uint8); t[2:4, 2:4, 2:4] = 1
    p = np.zeros(shape, np.uint8); p[2:4, 2:4, 2:3] = 1
    suv = np.ones(shape, np.float32); suv[3, 3, 3] = 7.0
    _write(t, gt / "case_a.nii.gz"); _write(p, pred / "case_a.nii.gz"); _write(suv, pet / "case_a_0001.nii.gz")
    _write(np.full(shape, -50, np.float32), pet / "case_a_0000.nii.gz")  # CT channel must be ignored
    # case_b: negative case with a 3-voxel false positive
    t = np.zeros(shape, np.uint8)
    p = np.zeros(shape, np.uint8); p[5, 5, 5:8] = 1
    _write(t, gt / "case_b.nii.gz"); _write(p, pred / "case_b.nii.gz")
    # case_c: prediction on another grid -> this case fails, the others go on
    _write(np.zeros(shape, np.uint8), gt / "case_c.nii.gz")
    _write(np.zeros((8, 10, 11), np.uint8), pred / "case_c.nii.gz")
    # case_d: reference without prediction
    _write(np.zeros(shape, np.uint8), gt / "case_d.nii.gz")
    return pred, gt, pet


def _rows(path: Path):
    with open(path, newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def test_evaluate_cli_in_process_known_values(folders, tmp_path, capsys):
    pred, gt, pet = folders
    out = tmp_path / "out"
    rc = main(["evaluate", str(pred), str(gt), "--pet-dir", str(pet), "-o", str(out), "--quiet"])
    assert rc == 0
    rows = _rows(out / "per_case.csv")
    a, b, c = rows["case_a"], rows["case_b"], rows["case_c"]
    assert float(a["dice"]) == pytest.approx(2 * 4 / 12, abs=1e-5)
    assert float(a["tmtv_true_ml"]) == pytest.approx(8 * VOXEL_ML, rel=1e-5)
    assert float(a["tmtv_rel_error"]) == pytest.approx(-0.5, rel=1e-5)
    assert float(a["suv_max_true"]) == pytest.approx(7.0) and float(a["suv_max_pred"]) == pytest.approx(1.0)
    assert float(a["spacing_z_mm"]) == 4.0 and float(a["spacing_x_mm"]) == 1.0
    assert float(b["dice"]) == 0.0 and b["tmtv_rel_error"] == ""  # undefined -> empty cell
    assert float(b["fp_volume_ml"]) == pytest.approx(3 * VOXEL_ML, rel=1e-5)
    assert c["status"] == "error" and "case_c" in c["error"] and "grid" in c["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_evaluated"] == 2 and summary["n_failed"] == 1
    assert summary["n_with_true_lesion"] == 1 and summary["n_negative_cases_with_false_positives"] == 1
    assert summary["metrics"]["dice"]["n"] == 1  # negative case left out of Dice
    assert summary["references_without_prediction"] == ["case_d"]
    assert summary["pooled_detection"] == {"f1": pytest.approx(2 * 0.5 / 1.5), "fn": 0, "fp": 1, "pred_tp": 1,
                                           "precision": 0.5, "sensitivity": 1.0, "tp": 1}
    for name in ("bland_altman_tmtv", "tmtv_scatter", "dice_distribution"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    assert "case_c" in capsys.readouterr().out


def test_rerun_reuses_cache_and_recomputes_changed_case(folders, tmp_path):
    pred, gt, _ = folders
    out = tmp_path / "out"
    evaluate_folder(pred, gt, out_dir=out, plots=False, progress=False)
    cache = out / "cases" / "case_a.json"
    data = json.loads(cache.read_text())
    data["row"]["dice"] = 0.123  # a reused cache entry shows up unchanged
    cache.write_text(json.dumps(data))
    res = evaluate_folder(pred, gt, out_dir=out, plots=False, progress=False)
    assert {r["case_id"]: r for r in res.rows}["case_a"]["dice"] == 0.123
    # a changed prediction invalidates its entry
    p = np.zeros((8, 10, 12), np.uint8); p[2:4, 2:4, 2:4] = 1
    _write(p, pred / "case_a.nii.gz")
    os.utime(pred / "case_a.nii.gz", ns=(1, 10 ** 18))
    res = evaluate_folder(pred, gt, out_dir=out, plots=False, progress=False)
    assert {r["case_id"]: r for r in res.rows}["case_a"]["dice"] == pytest.approx(1.0)


def test_evaluate_console_script_and_bad_folder(folders, tmp_path):
    pred, gt, _ = folders
    env = dict(os.environ)
    proc = run_cli(["clips-nnunet", "evaluate", str(pred), str(gt), "--no-plots", "--quiet"], env, timeout=120)
    assert "evaluated 2/3 cases" in proc.stdout
    assert (pred / "evaluation" / "per_case.csv").is_file()
    bad = run_cli(["clips-nnunet", "evaluate", str(tmp_path / "nope"), str(gt)], env, timeout=120, check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
