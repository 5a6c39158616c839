"""Lesion measurement on hand-built masks with known answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clips_nnunet.metrics.lesions import dmax_from_centroids, measure_lesions


def test_empty_mask_gives_zeros_and_no_suv():
    s = measure_lesions(np.zeros((5, 6, 7), bool), (2.0, 1.0, 1.0), suv=np.ones((5, 6, 7)))
    assert s.n_lesions == 0 and s.tmtv_ml == 0 and s.dmax_mm == 0
    assert s.suv_max is None and s.suv_mean is None and s.tlg is None
    assert s.smallest_lesion_ml == 0 and s.largest_lesion_ml == 0 and s.lesions == []


def test_single_lesion_anisotropic_volume_suv_and_dmax_zero():
    m = np.zeros((10, 10, 10), np.uint8)
    m[2:4, 2:5, 2:6] = 1  # 2*3*4 = 24 voxels
    suv = np.zeros(m.shape)
    suv[2:4, 2:5, 2:6] = 2.0
    suv[3, 4, 5] = 10.0
    s = measure_lesions(m, (3.0, 2.0, 1.0), suv=suv)
    voxel_ml = 3 * 2 * 1 / 1000
    assert s.n_lesions == 1
    assert s.tmtv_ml == pytest.approx(24 * voxel_ml)
    assert s.dmax_mm == 0.0
    assert s.suv_max == pytest.approx(10.0)
    mean = (23 * 2 + 10) / 24
    assert s.suv_mean == pytest.approx(mean)
    assert s.tlg == pytest.approx(24 * voxel_ml * mean)
    les = s.lesions[0]
    assert les.bbox == (2, 2, 2, 4, 5, 6)
    # centroid index (2.5, 3, 3.5) times spacing (3, 2, 1)
    assert les.centroid_mm == pytest.approx((7.5, 6.0, 3.5))


def test_two_lesions_dmax_uses_mm_per_axis():
    m = np.zeros((20, 20, 20), bool)
    m[0, 0, 0] = True
    m[10, 5, 0] = True
    s = measure_lesions(m, (4.0, 2.0, 1.0))
    assert s.n_lesions == 2
    assert s.dmax_mm == pytest.approx(math.hypot(40.0, 10.0))
    assert s.suv_max is None and s.tlg is None


def test_label_values_above_one_count_as_lesion_and_sorted_by_volume():
    m = np.zeros((8, 8, 8), np.int16)
    m[0, 0, 0] = 2
    m[4:7, 4:7, 4:7] = 1
    s = measure_lesions(m, (1, 1, 1))
    assert [les.n_voxels for les in s.lesions] == [27, 1]
    assert s.largest_lesion_ml == pytest.approx(0.027) and s.smallest_lesion_ml == pytest.approx(0.001)


@pytest.mark.parametrize("connectivity,expected", [(6, 3), (18, 2), (26, 1)])
def test_connectivity_face_edge_corner(connectivity, expected):
    m = np.zeros((5, 5, 5), bool)
    m[1, 1, 1] = True
    m[1, 2, 2] = True  # shares an edge with (1,1,1)
    m[2, 3, 3] = True  # shares only a corner with (1,2,2)
    assert measure_lesions(m, (1, 1, 1), connectivity=connectivity).n_lesions == expected


def test_touching_lesions_merge_into_one():
    m = np.zeros((6, 6, 12), bool)
    m[1:4, 1:4, 1:6] = True
    m[1:4, 1:4, 6:10] = True  # face-adjacent block
    s = measure_lesions(m, (1, 1, 1))
    assert s.n_lesions == 1 and s.dmax_mm == 0


def test_to_dict_is_json_safe():
    m = np.zeros((4, 4, 4), bool)
    m[0, 0, 0] = m[3, 3, 3] = True
    d = measure_lesions(m, (1, 1, 1), suv=np.full(m.shape, 3.0, np.float32)).to_dict()
    d2 = json.loads(json.dumps(d))
    assert d2["n_lesions"] == 2 and len(d2["lesions"]) == 2
    assert d2["dmax_mm"] == pytest.approx(math.sqrt(27))
    assert d2["tlg"] == pytest.approx(0.002 * 3.0)


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="3D"):
        measure_lesions(np.zeros((4, 4)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        measure_lesions(np.zeros((4, 4, 4)), (1, 0, 1))
    with pytest.raises(ValueError, match="suv shape"):
        measure_lesions(np.zeros((4, 4, 4)), (1, 1, 1), suv=np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="connectivity"):
        measure_lesions(np.zeros((4, 4, 4)), (1, 1, 1), connectivity=8)


def test_dmax_many_points_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(1500, 3)) * [3, 1, 2]
    from scipy.spatial.distance import pdist
    assert dmax_from_centroids(pts) == pytest.approx(pdist(pts).max())


def test_per_lesion_suv_max_and_tlg():
    m = np.zeros((6, 6, 6), bool)
    m[0:2, 0:2, 0:2] = True
    m[4:6, 4:6, 4:6] = True
    suv = np.full(m.shape, 100.0)  # background must not leak into lesion statistics
    suv[0:2, 0:2, 0:2] = 2.0
    suv[0, 0, 0] = 5.0
    suv[4:6, 4:6, 4:6] = 3.0
    s = measure_lesions(m, (1, 1, 1), suv=suv)
    by_max = sorted((les.suv_max, les.suv_mean, les.tlg) for les in s.lesions)
    assert by_max[0] == pytest.approx((3.0, 3.0, 0.008 * 3.0))
    assert by_max[1] == pytest.approx((5.0, (7 * 2 + 5) / 8, 0.008 * (7 * 2 + 5) / 8))
    assert s.suv_max == 5.0 and s.tlg == pytest.approx(sum(les.tlg for les in s.lesions))
