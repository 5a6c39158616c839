"""The twin as DICOM (``clips-nnunet synth --phantom twin``): known SUV read back by the converter, masks, manifest,
annotators in SEG, CLI errors."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from clips_nnunet.dataset_conversion.masks import read_seg_mask
from clips_nnunet.dataset_conversion.suv import read_pet_suv
from clips_nnunet.synthetic.dicom_cohort import load_manifest, make_synthetic_cohort
from clips_nnunet.synthetic.twin import SMALL_GRIDS
from nnunet_helpers import nnunet_environment, run_cli


@pytest.fixture(scope="module")
def twin_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("twin_cohort")
    manifest = make_synthetic_cohort(root, n_patients=2, seed=4, phantom="twin", progress=False,
                                     label_error_fraction=0.5, label_error_kinds=["convention"])
    return root, manifest


def test_twin_dicom_reads_back_with_its_truth(twin_cohort):
    root, manifest = twin_cohort
    assert manifest["generator"]["phantom"] == "twin" and manifest["generator"]["label_error_kinds"] == ["convention"]
    for s in manifest["studies"]:
        assert s["phantom"] == "twin" and tuple(s["grid"]["pet_shape"]) == SMALL_GRIDS[0].shape
        files = sorted((root / s["study_dir"] / "PET").glob("*.dcm"))
        assert len(files) == SMALL_GRIDS[0].shape[0]
        assert len(list((root / s["study_dir"] / "CT").glob("*.dcm"))) == SMALL_GRIDS[1].shape[0]
        pet = sitk.GetArrayFromImage(read_pet_suv(files, label=s["key"]))
        gt_img = sitk.ReadImage(str(root / s["suv_path"]))
        np.testing.assert_allclose(pet, sitk.GetArrayFromImage(gt_img), rtol=1e-5, atol=1e-5)
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / s["label_path"])))
        tissue = sitk.GetArrayFromImage(sitk.ReadImage(str(root / s["tissue_path"])))
        assert label.sum() == s["n_label_voxels"] > 0 and tissue.max() > 10
        assert s["twin"]["n_lesions"] == len(s["lesions"]) and 0.0 <= s["difficulty"] <= 1.0
        assert all({"site", "kind", "measured_ml", "necrotic"} <= set(row) for row in s["lesions"])


def test_twin_seg_carries_the_annotator(twin_cohort):
    root, manifest = twin_cohort
    planted = [s for s in manifest["studies"] if s["annotation_error"].get("requested_kind") == "convention"]
    assert len(planted) == 1
    s = planted[0]
    rec = s["annotation_error"]
    assert rec["kind"] in ("convention", None) and rec["details"]["convention"] in (
        "41pct_suvmax", "suv2.5", "suv4", "percist")
    clean_img = sitk.ReadImage(str(root / s["label_path"]))
    noisy = sitk.GetArrayFromImage(sitk.ReadImage(str(root / s["annotated_label_path"]))).astype(bool)
    clean = sitk.GetArrayFromImage(clean_img).astype(bool)
    assert int((noisy != clean).sum()) == rec["changed_voxels"]
    files = sorted((root / s["study_dir"] / "PET").glob("*.dcm"))
    seg = read_seg_mask(root / s["study_dir"] / "SEG" / "lesions_seg.dcm", clean_img, files, label=s["key"])
    assert np.array_equal(seg.astype(bool), noisy)
    assert load_manifest(root) == manifest


@pytest.mark.integration
def test_synth_cli_twin_and_kind_errors(tmp_path):
    env = nnunet_environment(tmp_path / "nn")
    out = tmp_path / "cohort"
    proc = run_cli(["clips-nnunet", "synth", str(out), "-n", "1", "--phantom", "twin", "--quiet"], env)
    assert "wrote 1 studies" in proc.stdout and load_manifest(out)["generator"]["phantom"] == "twin"
    bad = run_cli(["clips-nnunet", "synth", str(tmp_path / "x"), "--phantom", "twin", "--label-errors", "0.5",
                   "--label-error-kinds", "slice_shift"], env, check=False)
    assert bad.returncode == 2 and "convention,missed_lesion" in bad.stderr and "Traceback" not in bad.stderr


def test_twin_is_the_default_phantom_and_the_demo_asks_for_the_box(tmp_path):
    """`clips-nnunet synth` writes twins unless --phantom box; the demo asks for the box phantom explicitly (its
    budget and held-out Dice were measured on it)."""
    from clips_nnunet.cli import build_parser
    from clips_nnunet.demo.pipeline import DemoOptions, demo_steps

    args = build_parser().parse_args(["synth", str(tmp_path / "c")])
    assert args.phantom == "twin" and args.background is None and args.label_error_kinds is None
    assert build_parser().parse_args(["synth", str(tmp_path / "c"), "--phantom", "box"]).phantom == "box"
    synth = next(s for s in demo_steps(DemoOptions(workdir=tmp_path / "w"), "cpu") if s.name == "synth")
    assert all(cmd[cmd.index("--phantom") + 1] == "box" for cmd in synth.commands)
    with pytest.raises(ValueError, match="unknown phantom 'ellipse'"):
        make_synthetic_cohort(tmp_path / "bad", n_patients=1, phantom="ellipse", progress=False)
    assert not (tmp_path / "bad").exists()


def test_box_phantom_refuses_the_twins_trunk_size(tmp_path):
    """``--size trunk`` exists for the twin only: the box phantom says so in one line and writes nothing."""
    from clips_nnunet.errors import UsageError

    with pytest.raises(UsageError, match="size 'trunk' is not a size of the box phantom: choose small, wholebody"):
        make_synthetic_cohort(tmp_path / "c", n_patients=2, phantom="box", size="trunk", progress=False)
    assert not (tmp_path / "c").exists()


def test_trunk_twins_are_the_small_twins_cropped(tmp_path):
    """A twin's patient is seeded by its spec's ``seed``, drawn after the spec's box lesions, whose number depends on
    the box grid: trunk specs are drawn on the small grid (the same patients as ``--size small``), wholebody specs on
    the wholebody grid (the patients they were before ``trunk``), so the two seeds differ for at least one patient."""
    from clips_nnunet.synthetic.dicom_cohort import spec_size
    from clips_nnunet.synthetic.phantom import make_study_specs

    assert (spec_size("trunk"), spec_size("small"), spec_size("wholebody")) == ("small", "small", "wholebody")
    seeds = {size: [s.seed for s in make_study_specs(5, seed=3, size=size)] for size in ("small", "wholebody")}
    assert seeds["small"] != seeds["wholebody"]
    patients = {}
    for size in ("small", "trunk"):
        manifest = make_synthetic_cohort(tmp_path / size, n_patients=2, seed=3, phantom="twin", size=size,
                                         progress=False)
        patients[size] = [s["twin"]["patient"] for s in manifest["studies"]]
        assert [tuple(s["grid"]["pet_shape"]) for s in manifest["studies"]] == [
            (131 if size == "small" else 108, 64, 64)] * 2
    assert patients["small"] == patients["trunk"]
