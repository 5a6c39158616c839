"""The TMTV report and the coronal MIP on hand-built volumes with hand-computed answers (fast unit tests)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from clips_nnunet.metrics.lesions import measure_lesions
from clips_nnunet.prediction.mip import coronal_mip, lesion_positions_lps, save_coronal_mip
from clips_nnunet.prediction.patient_report import build_report, render_markdown, write_report
from clips_nnunet.io_utils import read_json

SPACING_ZYX = (4.0, 2.0, 2.0)  # voxel = 16 mm^3 = 0.016 ml


def _two_lesions():
    mask = np.zeros((10, 10, 10), np.uint8)
    suv = np.ones((10, 10, 10), np.float32)
    mask[1:3, 1:3, 1:3] = 1          # 8 voxels, SUV 5 except one voxel 9
    suv[1:3, 1:3, 1:3] = 5.0
    suv[2, 2, 2] = 9.0
    mask[7, 7, 7] = 1                # 1 voxel, SUV 3
    suv[7, 7, 7] = 3.0
    return mask, suv


def test_report_values_hand_computed(tmp_path):
    mask, suv = _two_lesions()
    report = build_report(measure_lesions(mask, SPACING_ZYX, suv=suv), case_id="PRED_0001",
                          model={"stages": [{"stage": 1, "model": "T__P__C", "folds": [0]}], "checkpoint": "c.pth",
                                 "device": "cpu"}, warnings=["CT does not cover the PET"])
    assert report["tmtv_ml"] == pytest.approx(9 * 0.016)
    assert report["n_lesions"] == 2
    assert report["suv_max"] == pytest.approx(9.0)
    assert report["suv_mean"] == pytest.approx((7 * 5 + 9 + 3) / 9)
    assert report["tlg"] == pytest.approx(9 * 0.016 * (47 / 9))
    # centroids (1.5,1.5,1.5) and (7,7,7) voxels -> (6,3,3) and (28,14,14) mm: distance sqrt(22^2+11^2+11^2)
    assert report["dmax_mm"] == pytest.approx(math.sqrt(726.0))
    assert report["smallest_lesion_ml"] == pytest.approx(0.016)
    assert report["largest_lesion_ml"] == pytest.approx(0.128)
    assert [les["index"] for les in report["lesions"]] == [1, 2]
    assert report["lesions"][0]["volume_ml"] == pytest.approx(0.128)
    assert report["lesions"][0]["tlg"] == pytest.approx(0.128 * (7 * 5 + 9) / 8)
    assert report["lesions"][1]["suv_max"] == pytest.approx(3.0)
    assert report["spacing_zyx_mm"] == list(SPACING_ZYX)

    write_report(report, tmp_path)
    assert read_json(tmp_path / "report.json")["tmtv_ml"] == pytest.approx(0.144)
    md = (tmp_path / "report.md").read_text()
    assert "| TMTV (ml) | 0.14 |" in md and "| Dmax (mm) | 26.9 |" in md
    assert "| 2 | 0.02 | 1 | 3.00 | 3.00 | 0.05 |" in md
    assert "CT does not cover the PET" in md and "`T__P__C`" in md


def test_report_single_and_no_lesion():
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[2:4, 2:4, 2:4] = 1
    one = build_report(measure_lesions(mask, (3.0, 3.0, 3.0), suv=np.full(mask.shape, 2.0)), case_id="PRED_0002")
    assert one["n_lesions"] == 1 and one["dmax_mm"] == 0.0
    assert one["tmtv_ml"] == pytest.approx(8 * 27 / 1000)
    none = build_report(measure_lesions(np.zeros_like(mask), (3.0, 3.0, 3.0), suv=np.ones(mask.shape)),
                        case_id="PRED_0003")
    assert none["tmtv_ml"] == 0 and none["n_lesions"] == 0 and none["dmax_mm"] == 0.0 and none["suv_max"] is None
    md = render_markdown(none)
    assert "No lesion found" in md and "| SUVmax (g/ml) | n/a |" in md


def test_report_rejects_path_like_case_id():
    with pytest.raises(ValueError, match="pseudonymous id"):
        build_report(measure_lesions(np.zeros((2, 2, 2)), (1, 1, 1)), case_id="../x")


def test_coronal_mip_is_max_over_anterior_posterior_axis():
    rng = np.random.default_rng(0)
    suv = rng.random((5, 6, 7)).astype(np.float32)
    mask = np.zeros(suv.shape, np.uint8)
    mask[2, 4, 3] = 1
    mip, proj = coronal_mip(suv, mask)
    assert mip.shape == (5, 7) and np.array_equal(mip, suv.max(axis=1))
    assert proj.sum() == 1 and proj[2, 3]
    with pytest.raises(ValueError, match="PET grid"):
        coronal_mip(suv, mask[:, :, :3])


def test_mip_png_head_at_top(tmp_path):
    import matplotlib.image as mpimg

    suv = np.zeros((40, 20, 20), np.float32)
    suv[35:38, 8:12, 8:12] = 8.0  # hot spot near the most superior slice (LPS: index z grows to the head)
    img = sitk.GetImageFromArray(suv)
    img.SetSpacing((2.0, 2.0, 4.0))
    mask = sitk.GetImageFromArray((suv > 4).astype(np.uint8))
    mask.CopyInformation(img)
    out = save_coronal_mip(img, mask, tmp_path / "mip.png", title="test")
    pixels = mpimg.imread(str(out))[..., :3]
    pixels = pixels[:, : int(pixels.shape[1] * 0.75)]  # the image, not the SUV colour scale at its right
    height = pixels.shape[0]
    dark = np.argwhere(pixels.mean(axis=2) < 0.2)
    red = np.argwhere((pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3))
    assert len(dark) and dark[:, 0].mean() < height / 2, "the superior hot spot must be drawn in the upper half"
    assert len(red), "the segmentation outline must be drawn in red"
    assert abs(red[:, 0].mean() - dark[:, 0].mean()) < height / 8


def _pet_image(array, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((2.0, 2.0, 4.0))  # x, y, z = SPACING_ZYX reversed
    img.SetOrigin((-100.0, 50.0, 200.0))
    img.SetDirection(direction)
    return img


@pytest.mark.parametrize("flip_z", [False, True])
def test_report_locates_lesions_in_patient_coordinates_and_pet_slices(flip_z):
    mask, suv = _two_lesions()
    img = _pet_image(suv, (1, 0, 0, 0, 1, 0, 0, 0, -1) if flip_z else (1, 0, 0, 0, 1, 0, 0, 0, 1))
    report = build_report(measure_lesions(mask, SPACING_ZYX, suv=suv), case_id="PRED_0001", image=img)
    small = report["lesions"][1]  # the one-voxel lesion at index (z, y, x) = (7, 7, 7)
    z_mm = 200.0 - 7 * 4.0 if flip_z else 200.0 + 7 * 4.0
    assert small["centroid_lps_mm"] == [-100.0 + 14.0, 50.0 + 14.0, z_mm]
    assert small["slice"] == 8 and small["n_slices"] == 10 and small["slice_z_mm"] == z_mm
    md = render_markdown(report)
    assert "patient LPS" in md and f"| -86.0, 64.0, {z_mm:.1f} | 8 of 10 ({z_mm:.1f}) |" in md


def test_mip_lesion_numbers_follow_the_report_in_any_orientation():
    mask, suv = _two_lesions()
    # stored with x and y flipped (RAS-like index order): the MIP reorients to LPS, the numbers must follow
    img = _pet_image(suv, (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    mask_img = sitk.GetImageFromArray(mask)
    mask_img.CopyInformation(img)
    lps = sitk.DICOMOrient(mask_img, "LPS")
    positions = dict(lesion_positions_lps(mask_img, lps, SPACING_ZYX))
    assert sorted(positions) == [1, 2]  # report numbering: largest (8 voxels) first
    arr = sitk.GetArrayFromImage(lps)
    for number, (z, y, x) in positions.items():
        assert arr[int(round(z)), int(round(y)), int(round(x))] == 1
    assert positions[2] == pytest.approx((7.0, 2.0, 2.0))  # index 7 of 10 flipped in x and y


def test_mip_of_an_empty_prediction_says_no_lesion_found(tmp_path):
    import matplotlib.image as mpimg

    suv = np.ones((40, 20, 20), np.float32)
    suv[30:33, 8:12, 8:12] = 6.0
    img = sitk.GetImageFromArray(suv)
    img.SetSpacing((2.0, 2.0, 4.0))
    empty = sitk.GetImageFromArray(np.zeros(suv.shape, np.uint8))
    empty.CopyInformation(img)
    green = []
    for name, mask in (("empty", empty), ("lesion", sitk.Cast(img > 4, sitk.sitkUInt8))):
        pixels = mpimg.imread(str(save_coronal_mip(img, mask, tmp_path / f"{name}.png")))[..., :3]
        green.append(int(((pixels[..., 1] > 0.3) & (pixels[..., 0] < 0.2) & (pixels[..., 2] < 0.2)).sum()))
    assert green[0] > 50 and green[1] == 0  # the dark-green caption only on the empty result
