"""Lesions inserted into the real GE patient of ../shared/testdata (clips_nnunet.synthetic.insertion): the written PET
reads back through the converter as the recorded truth, the SEG holds the truth mask and passes dciodvfy, the GTV
stays unchanged, and each lesion's SUVmax and volume lie within hand-computed partial-volume bounds."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage, special

from clips_nnunet.dataset_conversion.masks import read_seg_mask
from clips_nnunet.dataset_conversion.suv import read_pet_suv
from clips_nnunet.synthetic.insertion import EXCLUDE_MM, insert_lesions
from clips_nnunet.synthetic.twin_physics import FWHM_TO_SIGMA
from nnunet_helpers import nnunet_environment, run_cli

GE = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "tcia_sts_001"
pytestmark = pytest.mark.skipif(not GE.is_dir(), reason="../shared/testdata/tcia_sts_001 not present")
FWHM = 6.0


@pytest.fixture(scope="module")
def inserted(tmp_path_factory):
    out = tmp_path_factory.mktemp("inserted")
    manifest = insert_lesions(GE, out, seed=1, n_lesions=4, lobulated=False, psf_fwhm_mm=FWHM)
    return out, manifest["studies"][0]


def _pet_files(out: Path, study: dict):
    return sorted((out / study["study_dir"] / "PET").glob("*.dcm"))


def test_written_pet_reads_back_as_the_truth(inserted):
    out, study = inserted
    pet = read_pet_suv(_pet_files(out, study), label="inserted")
    gt = sitk.ReadImage(str(out / study["suv_path"]))
    np.testing.assert_allclose(sitk.GetArrayFromImage(pet), sitk.GetArrayFromImage(gt), rtol=1e-5, atol=1e-4)
    label_img = sitk.ReadImage(str(out / study["label_path"]))
    label = sitk.GetArrayFromImage(label_img).astype(bool)
    seg = read_seg_mask(out / study["study_dir"] / "SEG" / "lesions_seg.dcm", label_img, _pet_files(out, study),
                        label="inserted")
    assert np.array_equal(seg.astype(bool), label) and label.sum() == study["n_label_voxels"] > 0
    assert len(study["lesions"]) == 4 and study["ct_files"] == 59


def test_gtv_is_excluded_and_unchanged(inserted):
    out, study = inserted
    assert any("GTV_Mass" in m.get("rois", "") for m in study["masks_excluded"])
    excluded = sitk.GetArrayFromImage(sitk.ReadImage(str(out / study["excluded_path"]))).astype(bool)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / study["label_path"]))).astype(bool)
    assert excluded.sum() > 100 and not (excluded & label).any()
    old = sitk.GetArrayFromImage(read_pet_suv(sorted((GE / "STS_001_PT_raw_BQML").glob("*.dcm")), label="ge"))
    new = sitk.GetArrayFromImage(read_pet_suv(_pet_files(out, study), label="inserted"))
    # slices without a lesion keep their stored pixels; lesion slices are requantised: one step = slice max / 32000
    step = new.reshape(new.shape[0], -1).max(axis=1)[:, None, None] / 32000.0 * 1.01
    diff = np.abs(new - old)
    assert (diff <= np.broadcast_to(step, new.shape))[excluded].all()
    spacing = np.array(sitk.ReadImage(str(out / study["label_path"])).GetSpacing()[::-1])
    distance = ndimage.distance_transform_edt(~excluded, sampling=spacing)
    assert distance[label].min() > 8.0  # lesions stay 8 mm from the GTV (sites >= EXCLUDE_MM = 20 mm)
    assert EXCLUDE_MM == 20.0


def test_lesion_suvmax_and_volume_within_partial_volume_bounds(inserted):
    """Each lesion is a ball of radius r (volume V) painted with uptake U over a background b (min/max within the
    lesion: b0/b1), blurred by a Gaussian PSF of FWHM 6 mm after painting on voxels (sz, sy, sx).

    - Volume: the truth mask is the voxels whose centres lie inside the ball, so its volume lies between the balls of
      radius r - d and r + d, d the half voxel diagonal.
    - SUVmax upper bound: the blurred replacement never exceeds U - b0 above the background, so SUVmax <= U + (b1 - b0)
      + 4 noise SD (SD = 0.12 sqrt(U x body median), the largest the noise model gives).
    - SUVmax lower bound: at the centre voxel the blurred ball keeps at least the recovery of a ball under a Gaussian
      of variance sigma_psf^2 + max(voxel)^2 / 12 (the voxel box), erf(a) - 2a/sqrt(pi) exp(-a^2), a = r / (sigma
      sqrt 2): SUVmax >= b0 + R (U - b1) - 4 SD.
    """
    out, study = inserted
    spacing = np.array(sitk.ReadImage(str(out / study["label_path"])).GetSpacing()[::-1])
    half_diag = 0.5 * float(np.linalg.norm(spacing))
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(out / study["suv_path"])))
    body_median = float(np.median(gt[gt > 0.2]))
    for row in study["lesions"]:
        u, v = row["suv"], row["volume_ml"]
        r = (3.0 * v * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        vol = lambda radius: 4.0 / 3.0 * np.pi * max(radius, 0.0) ** 3 / 1000.0  # noqa: E731
        assert vol(r - half_diag) <= row["measured_ml"] <= vol(r + half_diag), row
        b = row["background_suv"]
        sd = 0.12 * np.sqrt(u * body_median)
        sigma = np.sqrt((FWHM * FWHM_TO_SIGMA) ** 2 + spacing.max() ** 2 / 12.0)
        a = r / (sigma * np.sqrt(2.0))
        recovery = special.erf(a) - 2.0 * a / np.sqrt(np.pi) * np.exp(-a * a)
        b0, b1 = 0.5 * b, 2.0 * b + 0.5  # background spread around the site (sites are in tissue below SUV 2.5)
        assert b0 + recovery * (u - b1) - 4 * sd <= row["measured_suvmax"] <= u + (b1 - b0) + 4 * sd, (row, recovery)


def test_seg_passes_dciodvfy(inserted):
    out, study = inserted
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed")
    seg = out / study["study_dir"] / "SEG" / "lesions_seg.dcm"
    proc = subprocess.run(["dciodvfy", str(seg)], capture_output=True, text=True, timeout=120)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)


@pytest.mark.integration
def test_synth_background_cli_writes_what_convert_reads(tmp_path):
    env = nnunet_environment(tmp_path / "nn")
    out = tmp_path / "semi"
    proc = run_cli(["clips-nnunet", "synth", str(out), "--background", str(GE), "--lesions", "2", "--seed", "3"], env)
    assert "inserted 2 lesion(s)" in proc.stdout
    conv = run_cli(["clips-nnunet", "convert", str(out), "-d", "779", "-n", "Semi", "--private-dir",
                    str(tmp_path / "private"), "--quiet"], env)
    assert "converted 1, failed 0" in conv.stdout
    bad = run_cli(["clips-nnunet", "synth", str(tmp_path / "x"), "--background", str(tmp_path / "missing")], env,
                  check=False)
    assert bad.returncode != 0 and "not a folder" in bad.stderr and "Traceback" not in bad.stderr
