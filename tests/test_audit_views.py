"""The audit page's pictures (clips_nnunet.audit.views): planes shown in radiological orientation with the right
letters, and pictures that decode as PNG with and without CT."""
import base64
import io

import numpy as np
import pytest

from clips_nnunet.audit.views import PLANES, mip_picture, plane_cut, plane_position, planes_picture


def _marked_volume():
    """LPS (z, y, x) volume with one marked voxel: superior (high z), anterior (low y), patient's right (low x)."""
    vol = np.zeros((20, 16, 12))
    vol[15, 3, 2] = 1.0
    return vol


def test_planes_are_displayed_with_their_orientation_letters():
    vol = _marked_volume()
    letters = dict(PLANES)
    for plane, (top, bottom, left, right) in letters.items():
        img = plane_cut(vol, plane, (15, 3, 2))
        row, col = np.argwhere(img == 1.0)[0]
        # the marked voxel is superior, anterior and on the patient's right: it must be drawn towards the letter
        # that names each of those directions
        expect_top = {"A": True, "H": True}.get(top, False)
        assert (row < img.shape[0] / 2) == expect_top, plane
        expect_left = left in ("R", "A")
        assert (col < img.shape[1] / 2) == expect_left, plane
        assert plane_position(plane, (15, 3, 2), vol.shape) == (row, col)
    assert letters["axial"] == ("A", "P", "R", "L") and letters["coronal"] == ("H", "F", "R", "L")
    assert letters["sagittal"] == ("H", "F", "A", "P")
    with pytest.raises(ValueError, match="unknown plane"):
        plane_cut(vol, "oblique", (0, 0, 0))


@pytest.mark.parametrize("with_ct", [True, False])
def test_pictures_are_png(with_ct):
    import matplotlib.image as mpimg

    suv = np.ones((20, 16, 12), np.float32)
    suv[14:17, 2:5, 1:4] = 7.0
    ref = suv > 4
    ct = np.full(suv.shape, 40.0, np.float32) if with_ct else None
    for uri in (planes_picture(suv, ct, ref, ref, (3.0, 2.0, 2.0), (15, 3, 2)),
                mip_picture(suv, ref, ref, (3.0, 2.0, 2.0), finding_zyx=(15.0, 3.0, 2.0))):
        assert uri.startswith("data:image/png;base64,")
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
