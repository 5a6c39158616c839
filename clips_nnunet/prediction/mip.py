"""Coronal maximum-intensity projection (MIP) of a PET SUV volume with the segmentation outlined.

This is the picture a nuclear-medicine physician looks at first: the whole body in one image, black uptake on white,
with every predicted lesion outlined in colour. TMTV-Net's own tool returns the same kind of image.

Orientation: the volumes are first reoriented to DICOM LPS index order (``SimpleITK.DICOMOrient``), so array axes are
(z: towards superior, y: towards posterior, x: towards the patient's left). The coronal MIP is the maximum over y;
the image is shown with the head at the top and the patient's right on the viewer's left (radiological convention),
with the aspect ratio taken from the voxel spacing so anisotropic volumes are not distorted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from clips_nnunet.io_utils import PathLike, atomic_path


def coronal_mip(suv_zyx: np.ndarray, mask_zyx: Optional[np.ndarray] = None
                ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Coronal MIP of ``suv_zyx`` (max over axis 1, the anterior-posterior axis) and the mask's projection.

    Returns ``(mip, mask_projection)``, both (z, x); ``mask_projection`` is True where any voxel along the ray is
    segmented (None when no mask is given). Arrays must be 3-D and of the same shape.
    """
    suv_zyx = np.asarray(suv_zyx)
    if suv_zyx.ndim != 3:
        raise ValueError(f"coronal_mip: the SUV volume must be 3-D (z, y, x), got shape {suv_zyx.shape}")
    mip = suv_zyx.max(axis=1)
    if mask_zyx is None:
        return mip, None
    mask_zyx = np.asarray(mask_zyx)
    if mask_zyx.shape != suv_zyx.shape:
        raise ValueError(f"coronal_mip: mask shape {mask_zyx.shape} differs from the SUV shape {suv_zyx.shape}; "
                         "resample the mask onto the PET grid first")
    return mip, (mask_zyx > 0).any(axis=1)


def _to_lps_arrays(suv: sitk.Image, mask: Optional[sitk.Image]
                   ) -> Tuple[np.ndarray, Optional[np.ndarray], Tuple[float, float, float]]:
    suv_lps = sitk.DICOMOrient(suv, "LPS")
    suv_arr = sitk.GetArrayFromImage(suv_lps).astype(np.float32)
    spacing_zyx = tuple(float(s) for s in suv_lps.GetSpacing()[::-1])
    mask_arr = None
    if mask is not None:
        if mask.GetSize() != suv.GetSize():
            raise ValueError(f"MIP: mask size {mask.GetSize()} differs from the PET size {suv.GetSize()}; "
                             "the mask must be on the PET grid")
        mask_arr = sitk.GetArrayFromImage(sitk.DICOMOrient(mask, "LPS")) > 0
    return suv_arr, mask_arr, spacing_zyx


def save_coronal_mip(suv: sitk.Image, mask: Optional[sitk.Image], output_path: PathLike,
                     title: Optional[str] = None, suv_max_display: Optional[float] = None,
                     outline_colour: str = "red", dpi: int = 120) -> Path:
    """Write a PNG of the coronal SUV MIP of ``suv`` with ``mask`` (same grid) outlined; return its path.

    ``suv_max_display`` sets the SUV shown as black (default: 10, or the image maximum if lower, the usual
    lymphoma display window). The write is atomic. ``title`` must not contain patient identifiers.
    """
    if not isinstance(suv, sitk.Image) or suv.GetDimension() != 3:
        raise ValueError("save_coronal_mip: `suv` must be a 3-D SimpleITK image (SUV on the PET grid)")
    if mask is not None and not isinstance(mask, sitk.Image):
        raise ValueError("save_coronal_mip: `mask` must be a SimpleITK image on the PET grid or None")
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    suv_arr, mask_arr, spacing_zyx = _to_lps_arrays(suv, mask)
    mip, proj = coronal_mip(suv_arr, mask_arr)
    # Row 0 of the displayed image = most superior slice.
    mip = mip[::-1]
    proj = proj[::-1] if proj is not None else None
    vmax = float(suv_max_display) if suv_max_display is not None else float(min(10.0, max(mip.max(), 1e-6)))
    height_mm = mip.shape[0] * spacing_zyx[0]
    width_mm = mip.shape[1] * spacing_zyx[2]
    fig_w = 4.0
    fig_h = float(np.clip(fig_w * height_mm / max(width_mm, 1e-6), 2.0, 12.0))
    fig = Figure(figsize=(fig_w, fig_h + 0.4))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 * fig_h / (fig_h + 0.4)))
    ax.imshow(mip, cmap="gray_r", vmin=0.0, vmax=vmax, interpolation="nearest",
              aspect=spacing_zyx[0] / spacing_zyx[2])
    if proj is not None and proj.any():
        # pad with background so that segmentations touching the image border are outlined there too
        padded = np.pad(proj.astype(np.float32), 1)
        ax.contour(np.arange(-1, proj.shape[1] + 1), np.arange(-1, proj.shape[0] + 1), padded, levels=[0.5],
                   colors=[outline_colour], linewidths=1.0)
    ax.set_axis_off()
    ax.set_title(title or f"Coronal SUV MIP (0-{vmax:g}), segmentation outlined", fontsize=8)
    output_path = Path(output_path)
    with atomic_path(output_path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return output_path

