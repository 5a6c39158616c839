"""`clips-nnunet convert-autopet` on a tiny fake FDG-PET-CT-Lesions NIfTI tree."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from clips_nnunet.dataset_conversion.autopet import find_autopet_studies
from clips_nnunet.errors import ClipsError
from clips_nnunet.io_utils import read_json
from nnunet_helpers import nnunet_environment, run_cli

SHAPE = (12, 16, 18)  # z, y, x
SPACING = (2.0364, 2.0364, 3.0)  # x, y, z as in autoPET


def _img(arr, origin=(-10.0, 5.0, -300.0), spacing=SPACING):
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    return img


def _study(folder: Path, rng, n_lesion_vox: int, with_seg=True, with_ct=True, ct_grid_differs=False):
    folder.mkdir(parents=True)
    suv = rng.gamma(2.0, 0.4, SHAPE).astype(np.float32)
    seg = np.zeros(SHAPE, np.uint8)
    seg.flat[rng.choice(seg.size, n_lesion_vox, replace=False)] = 1
    suv[seg > 0] += 6.0
    ct = rng.normal(30, 20, SHAPE).astype(np.float32)
    sitk.WriteImage(_img(suv), str(folder / "SUV.nii.gz"))
    if with_ct:
        ct_img = _img(ct, spacing=(1.0, 1.0, 1.5)) if ct_grid_differs else _img(ct)
        sitk.WriteImage(ct_img, str(folder / "CTres.nii.gz"))
    if with_seg:
        sitk.WriteImage(_img(seg), str(folder / "SEG.nii.gz"))
    return suv, seg


@pytest.mark.integration
def test_convert_autopet_tree(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "FDG-PET-CT-Lesions"
    truth = {}
    truth[("PETCT_0a1", "03-05-2001-NA-PET-CT Ganzkoerper-10445")] = _study(
        root / "PETCT_0a1" / "03-05-2001-NA-PET-CT Ganzkoerper-10445", rng, 9)
    truth[("PETCT_0a1", "11-21-2001-NA-PET-CT Ganzkoerper-33511")] = _study(
        root / "PETCT_0a1" / "11-21-2001-NA-PET-CT Ganzkoerper-33511", rng, 4)
    truth[("PETCT_b22", "01-01-2002-NA-PET-CT-555")] = _study(root / "PETCT_b22" / "01-01-2002-NA-PET-CT-555", rng, 0)
    truth[("PETCT_c33", "06-06-2003-NA-PET-CT-777")] = _study(root / "PETCT_c33" / "06-06-2003-NA-PET-CT-777", rng,
                                                              6, ct_grid_differs=True)
    _study(root / "PETCT_d44" / "07-07-2004-NA-PET-CT-888", rng, 5, with_seg=False)
    _study(root / "PETCT_e55" / "08-08-2005-NA-PET-CT-999", rng, 5, with_ct=False)
    assert len(find_autopet_studies(root)) == 6

    env = nnunet_environment(tmp_path / "nn")
    proc = run_cli(["clips-nnunet", "convert-autopet", str(root), "-d", "601", "-n", "AutoPET", "--quiet"], env,
                   check=False)
    assert proc.returncode == 1 and "CTres.nii.gz is missing" in proc.stdout  # PETCT_e55 fails, the rest converts
    raw = Path(env["nnUNet_raw"]) / "Dataset601_AutoPET"
    mapping = read_json(tmp_path / "nn" / "clips_private" / "Dataset601_AutoPET" / "case_mapping.json")
    case_of = {(v["patient"], v["study"]): c for c, v in mapping["cases"].items()}
    for key, (suv, seg) in truth.items():
        case = case_of[key]
        pet = sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0001.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(pet), suv)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz"))),
                                      seg)
        ct = sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.nii.gz"))
        assert ct.GetSize() == pet.GetSize() and np.allclose(ct.GetSpacing(), SPACING)
    report = read_json(raw / "conversion_report.json")
    assert any("resampled" in w for w in report["cases"][case_of[("PETCT_c33", "06-06-2003-NA-PET-CT-777")]]
               ["warnings"])
    assert report["counts"] == {"converted": 5, "train": 4, "test": 1, "failed": 1, "skipped": 0}
    ds = read_json(raw / "dataset.json")
    assert ds["numTraining"] == 4 and ds["channel_names"] == {"0": "CT", "1": "CT"}
    meta = read_json(raw / "case_metadata.json")
    voxel_ml = np.prod(SPACING) / 1000.0
    for key, (suv, seg) in truth.items():
        assert meta[case_of[key]]["tmtv_ml"] == pytest.approx(seg.sum() * voxel_ml)
    assert meta[case_of[("PETCT_b22", "01-01-2002-NA-PET-CT-555")]]["n_lesions"] == 0  # lesion-free study kept
    splits = read_json(Path(env["nnUNet_preprocessed"]) / "Dataset601_AutoPET" / "splits_final.json")
    same_patient = {case_of[k] for k in truth if k[0] == "PETCT_0a1"}
    assert len(splits) == 3 and any(same_patient <= set(f["val"]) for f in splits)
    # study folder names carry dates: they must not reach the dataset
    for p in raw.rglob("*"):
        if p.is_file():
            text = p.read_bytes()
            for word in ("PETCT_", "2001", "Ganzkoerper"):
                assert word.encode() not in text or p.suffix == ".gz", (word, p)
            assert "PETCT" not in p.name

    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(raw), 1)


def test_find_autopet_studies_errors(tmp_path):
    with pytest.raises(ClipsError, match="does not exist"):
        find_autopet_studies(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipsError, match="no SUV.nii.gz"):
        find_autopet_studies(tmp_path / "empty")
