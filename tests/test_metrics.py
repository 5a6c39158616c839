"""Metrics on hand-built masks with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from clips_nnunet.metrics.case_metrics import compute_case_metrics, detection_metrics
from clips_nnunet.metrics.overlap import dice


def _blank(shape=(10, 10, 10)):
    return np.zeros(shape, bool)


def test_dice_rule_for_empty_masks_and_values():
    """The one Dice (metrics/overlap.py): empty/empty 1.0, empty/non-empty and non-empty/empty 0.0."""
    a, b = _blank(), _blank()
    assert dice(a, b) == 1.0
    a[0:2, 0:2, 0:2] = True  # 8 voxels
    assert dice(a, b) == 0.0 and dice(b, a) == 0.0
    b[0:2, 0:2, 0:1] = True  # 4 voxels, all inside a
    assert dice(a, b) == pytest.approx(2 * 4 / 12) and dice(b, a) == pytest.approx(2 * 4 / 12)
    labels = a.astype(np.uint8) * 3  # any label > 0 is foreground
    assert dice(labels, b) == pytest.approx(2 * 4 / 12)
    with pytest.raises(ValueError, match="different shapes"):
        dice(a, _blank((10, 10, 9)))


def test_empty_prediction_everything_missed():
    pred, true = _blank(), _blank()
    true[1:3, 1:3, 1:3] = True
    true[6, 6, 6] = True
    m = compute_case_metrics(pred, true, (2.0, 1.0, 1.0))
    assert m.has_true_lesion and m.dice == 0.0
    assert m.tmtv_true_ml == pytest.approx(9 * 0.002) and m.tmtv_pred_ml == 0
    assert m.tmtv_rel_error == pytest.approx(-1.0)
    assert m.fn_volume_ml == pytest.approx(9 * 0.002) and m.fp_volume_ml == 0
    assert (m.lesion_tp, m.lesion_fn, m.lesion_fp) == (0, 2, 0)
    assert m.lesion_sensitivity == 0 and math.isnan(m.lesion_precision) and m.lesion_f1 == 0
    # Dmax: centroids index (1.5, 1.5, 1.5) -> (3, 1.5, 1.5) mm and (6, 6, 6) -> (12, 6, 6) mm
    assert m.dmax_true_mm == pytest.approx(math.sqrt(9 ** 2 + 4.5 ** 2 + 4.5 ** 2))
    assert m.dmax_pred_mm == 0 and m.dmax_error_mm == pytest.approx(-m.dmax_true_mm)


def test_empty_truth_negative_case():
    pred, true = _blank(), _blank()
    pred[4:6, 4:6, 4:6] = True
    m = compute_case_metrics(pred, true, (1.0, 1.0, 1.0))
    assert not m.has_true_lesion
    assert m.dice == 0.0 and math.isnan(m.tmtv_rel_error)
    assert m.fp_volume_ml == pytest.approx(0.008) and m.fn_volume_ml == 0
    assert (m.lesion_tp, m.lesion_fn, m.lesion_fp) == (0, 0, 1)
    assert math.isnan(m.lesion_sensitivity) and m.lesion_precision == 0 and m.lesion_f1 == 0


def test_both_empty_dice_one_f1_undefined_volumes_zero():
    m = compute_case_metrics(_blank(), _blank(), (1, 1, 1))
    assert m.dice == 1.0 and math.isnan(m.lesion_f1)
    assert m.fp_volume_ml == 0 and m.fn_volume_ml == 0 and m.tmtv_abs_error_ml == 0


def test_fp_fn_volumes_component_wise_like_autopet():
    true, pred = _blank((12, 12, 12)), _blank((12, 12, 12))
    true[0:2, 0:2, 0:2] = True        # lesion A (8 vox): hit by one voxel
    true[8:10, 8:10, 8:10] = True     # lesion B (8 vox): missed -> FN volume 8
    pred[1:4, 1:4, 1:4] = True        # 27 vox, touches A -> not FP although mostly outside
    pred[5, 10, 0] = True             # isolated -> FP 1 voxel
    pred[5, 11, 1] = True             # edge-neighbour of the previous one: same 18-component
    d = detection_metrics(pred, true, (1, 1, 1))
    assert d.fp_volume_ml == pytest.approx(0.002) and d.fn_volume_ml == pytest.approx(0.008)
    assert (d.tp, d.fn, d.fp) == (1, 1, 1)
    assert d.sensitivity == 0.5 and d.precision == 0.5 and d.f1 == pytest.approx(0.5)


def test_corner_only_neighbours_are_separate_with_autopet_connectivity():
    true, pred = _blank(), _blank()
    true[2, 2, 2] = True
    pred[2, 2, 2] = True
    pred[3, 3, 3] = True  # corner neighbour: separate 18-component, touching no truth -> FP
    d18 = detection_metrics(pred, true, (1, 1, 1))
    d26 = detection_metrics(pred, true, (1, 1, 1), connectivity=26)
    assert d18.fp == 1 and d18.fp_volume_ml == pytest.approx(0.001)
    assert d26.fp == 0 and d26.fp_volume_ml == 0


def test_touching_true_lesions_count_once():
    true, pred = _blank(), _blank()
    true[2:4, 2:4, 2:4] = True
    true[2:4, 2:4, 4:6] = True  # touches the first block: one lesion
    pred[2, 2, 5] = True
    m = compute_case_metrics(pred, true, (1, 1, 1))
    assert m.n_lesions_true == 1 and m.lesion_tp == 1 and m.lesion_fn == 0 and m.fn_volume_ml == 0
    assert m.dmax_true_mm == 0


def test_anisotropic_spacing_scales_volumes_and_distances():
    true, pred = _blank(), _blank()
    true[0, 0, 0] = true[4, 0, 0] = True
    pred[0, 0, 0] = True
    pred[0, 0, 4] = True
    pred[9, 9, 9] = True
    iso = compute_case_metrics(pred, true, (1, 1, 1))
    an = compute_case_metrics(pred, true, (5.0, 1.0, 0.5))
    assert iso.dmax_true_mm == pytest.approx(4.0) and an.dmax_true_mm == pytest.approx(20.0)
    # pred centroids (0,0,0), (0,0,2), (45,9,4.5) mm: farthest pair (0,0,0)-(45,9,4.5)
    assert an.dmax_pred_mm == pytest.approx(math.sqrt(45 ** 2 + 9 ** 2 + 4.5 ** 2))
    assert an.fp_volume_ml == pytest.approx(2 * 2.5 / 1000) and an.fn_volume_ml == pytest.approx(2.5 / 1000)
    assert an.tmtv_error_ml == pytest.approx(2.5 / 1000)


def test_suv_stats_of_pred_and_truth():
    true, pred = _blank(), _blank()
    true[1:3, 1:3, 1:3] = True
    pred[1:3, 1:3, 1:2] = True
    suv = np.ones(true.shape)
    suv[1, 1, 2] = 9.0  # inside truth only
    m = compute_case_metrics(pred, true, (1, 1, 1), suv=suv)
    assert m.suv_max_true == 9.0 and m.suv_max_pred == 1.0
    assert m.tlg_true == pytest.approx(0.008 * (7 + 9) / 8) and m.tlg_pred == pytest.approx(0.004)
    assert m.tlg_abs_error == pytest.approx(m.tlg_true - m.tlg_pred)


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="same voxel grid"):
        compute_case_metrics(_blank((4, 4, 4)), _blank((4, 4, 5)), (1, 1, 1))


def test_vectorised_fp_fn_equals_per_component_loop_on_random_masks():
    """Reference: the per-component loop the autoPET script describes (each component checked on its own)."""
    import cc3d

    rng = np.random.default_rng(1)
    for _ in range(5):
        true = rng.random((20, 18, 16)) > 0.93
        pred = rng.random((20, 18, 16)) > 0.93
        fp = fn = 0
        pl = cc3d.connected_components(pred, connectivity=18)
        for i in range(1, pl.max() + 1):
            fp += (pl == i).sum() if not ((pl == i) & true).any() else 0
        tl = cc3d.connected_components(true, connectivity=18)
        for i in range(1, tl.max() + 1):
            fn += (tl == i).sum() if not ((tl == i) & pred).any() else 0
        d = detection_metrics(pred, true, (2.0, 1.0, 1.5))
        assert d.fp_volume_ml == pytest.approx(fp * 0.003) and d.fn_volume_ml == pytest.approx(fn * 0.003)
        assert d.n_true_lesions == tl.max() and d.fn == sum(not ((tl == i) & pred).any()
                                                           for i in range(1, tl.max() + 1))
