"""Coronal maximum-intensity projection (MIP) of a PET SUV volume with the segmentation outlined.

This is the picture a nuclear-medicine physician looks at first: the whole body in one image, black uptake on white,
with every predicted lesion outlined in colour. TMTV-Net's own tool returns the same kind of image.

Every MIP carries what a reader needs to trust it: the patient's R and L at the image sides, an SUV colour scale
(0 to the displayed maximum), each lesion's number (the report's numbering: largest first) beside it, and "no lesion
found" written across an empty result. :func:`orientation_labels` and :func:`suv_colourbar` draw the markers and the
scale for the audit page's pictures too.

Orientation: the volumes are first reoriented to DICOM LPS index order (``SimpleITK.DICOMOrient``), so array axes are
(z: towards superior, y: towards posterior, x: towards the patient's left). The coronal MIP is the maximum over y;
the image is shown with the head at the top and the patient's right on the viewer's left (radiological convention),
with the aspect ratio taken from the voxel spacing so anisotropic volumes are not distorted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

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


_IDENTITY = np.eye(3).ravel()


def _lps(image: sitk.Image) -> sitk.Image:
    """``image`` reoriented to LPS index order; ``image`` itself when it is in that order already (the usual axial
    PET, whose direction is the identity: reorienting would only copy it)."""
    if np.allclose(image.GetDirection(), _IDENTITY, atol=1e-6):
        return image
    return sitk.DICOMOrient(image, "LPS")


def _to_lps_arrays(suv: sitk.Image, mask: Optional[sitk.Image]
                   ) -> Tuple[np.ndarray, Optional[np.ndarray], Tuple[float, float, float]]:
    """The SUV (float32) and mask (bool) arrays in LPS index order (z, y, x) and the spacing in that order; the SUV
    array may be a read-only view of ``suv``."""
    suv_lps = _lps(suv)
    suv_arr = _array(suv_lps, suv).astype(np.float32, copy=False)
    spacing_zyx = tuple(float(s) for s in suv_lps.GetSpacing()[::-1])
    mask_arr = None
    if mask is not None:
        if mask.GetSize() != suv.GetSize():
            raise ValueError(f"MIP: mask size {mask.GetSize()} differs from the PET size {suv.GetSize()}; "
                             "the mask must be on the PET grid")
        mask_arr = _array(_lps(mask), mask) > 0
    return suv_arr, mask_arr, spacing_zyx


def _array(image: sitk.Image, caller_image: sitk.Image) -> np.ndarray:
    """``image``'s array: a view when it is the caller's image (alive beyond this module's functions), else a copy
    (a view would outlive a reoriented temporary image)."""
    if image is caller_image:
        return sitk.GetArrayViewFromImage(image)
    return sitk.GetArrayFromImage(image)


MARKER_STYLE = {"fontsize": 9, "fontweight": "bold"}
MAX_NUMBERED = 40  # more numbers would hide the image; the report lists every lesion


def orientation_labels(ax: Any, top: str = "", bottom: str = "", left: str = "", right: str = "",
                       colour: str = "black", halo: str = "white") -> None:
    """Write orientation letters (R/L, A/P, H/F) inside the four edges of ``ax`` (axes coordinates), each with a
    thin halo so that it reads on any background."""
    from matplotlib import patheffects

    effects = [patheffects.withStroke(linewidth=2.5, foreground=halo)]
    for text, xy, ha, va in ((top, (0.5, 0.985), "center", "top"), (bottom, (0.5, 0.015), "center", "bottom"),
                             (left, (0.015, 0.5), "left", "center"), (right, (0.985, 0.5), "right", "center")):
        if text:
            ax.text(*xy, text, transform=ax.transAxes, ha=ha, va=va, color=colour, path_effects=effects,
                    **MARKER_STYLE)


def suv_colourbar(fig: Any, rect: Sequence[float], cmap: str, vmax: float, label: str = "SUV (g/ml)",
                  fontsize: float = 7.0) -> Any:
    """A vertical SUV colour scale from 0 to ``vmax`` in ``rect`` (figure coordinates: left, bottom, width,
    height); the top tick reads ``>= vmax`` because brighter voxels are drawn in the top colour."""
    from matplotlib import cm, colors

    cax = fig.add_axes(tuple(rect))
    bar = fig.colorbar(cm.ScalarMappable(norm=colors.Normalize(0.0, vmax), cmap=cmap), cax=cax)
    ticks = [t for t in bar.get_ticks() if 0.0 <= t < vmax * 0.999] + [vmax]
    bar.set_ticks(ticks)
    bar.set_ticklabels([f"{t:g}" for t in ticks[:-1]] + [f"\u2265{vmax:.3g}"])
    bar.ax.tick_params(labelsize=fontsize)
    bar.set_label(label, fontsize=fontsize)
    return bar


def lesion_positions_lps(mask: sitk.Image, mask_lps: sitk.Image, spacing_zyx: Sequence[float],
                         lesions: Optional[Sequence[Any]] = None) -> List[Tuple[int, Tuple[float, float, float]]]:
    """``[(number, centroid (z, y, x) as a continuous index of the LPS-oriented mask)]`` for every lesion of
    ``mask``, numbered as :func:`clips_nnunet.metrics.lesions.measure_lesions` orders them on the mask's own array
    (largest first): the numbers of the TMTV report. ``lesions``: that function's ``.lesions`` for ``mask``'s own
    array and spacing, when the caller has measured them already (the mask is then not labelled again)."""
    own_spacing = tuple(float(v) for v in mask.GetSpacing()[::-1])
    if lesions is None:
        from clips_nnunet.metrics.lesions import measure_lesions
        lesions = measure_lesions(sitk.GetArrayViewFromImage(mask) > 0, own_spacing).lesions
    out = []
    for number, les in enumerate(lesions, start=1):
        idx_zyx = [c / s for c, s in zip(les.centroid_mm, own_spacing)]
        point = mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx_zyx[::-1]])
        xyz = mask_lps.TransformPhysicalPointToContinuousIndex(point)
        out.append((number, (float(xyz[2]), float(xyz[1]), float(xyz[0]))))
    return out


def save_coronal_mip(suv: sitk.Image, mask: Optional[sitk.Image], output_path: PathLike,
                     title: Optional[str] = None, suv_max_display: Optional[float] = None,
                     outline_colour: str = "red", dpi: int = 120, number_lesions: bool = True,
                     lesions: Optional[Sequence[Any]] = None) -> Path:
    """Write a PNG of the coronal SUV MIP of ``suv`` with ``mask`` (same grid) outlined; return its path.

    ``suv_max_display`` sets the SUV shown as black (default: 10, or the image maximum if lower, the usual
    lymphoma display window). The picture carries R/L markers, an SUV colour scale and, with ``number_lesions``,
    each lesion's report number beside its centroid; an empty mask is captioned "no lesion found". The write is
    atomic. ``title`` must not contain patient identifiers. ``lesions``: the mask's lesions as
    :func:`clips_nnunet.metrics.lesions.measure_lesions` measured them on ``mask``'s own array, when the caller has
    them (see :func:`lesion_positions_lps`).
    """
    if not isinstance(suv, sitk.Image) or suv.GetDimension() != 3:
        raise ValueError("save_coronal_mip: `suv` must be a 3-D SimpleITK image (SUV on the PET grid)")
    if mask is not None and not isinstance(mask, sitk.Image):
        raise ValueError("save_coronal_mip: `mask` must be a SimpleITK image on the PET grid or None")
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import patheffects
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
    img_w = 4.0
    fig_h = float(np.clip(img_w * height_mm / max(width_mm, 1e-6), 2.0, 12.0))
    bar_w = 0.9  # inches for the colour scale and its labels
    fig_w = img_w + bar_w
    fig = Figure(figsize=(fig_w, fig_h + 0.4))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02 * img_w / fig_w, 0.02, 0.96 * img_w / fig_w, 0.96 * fig_h / (fig_h + 0.4)))
    ax.imshow(mip, cmap="gray_r", vmin=0.0, vmax=vmax, interpolation="nearest",
              aspect=spacing_zyx[0] / spacing_zyx[2])
    if proj is not None and proj.any():
        # pad with background so that segmentations touching the image border are outlined there too
        padded = np.pad(proj.astype(np.float32), 1)
        ax.contour(np.arange(-1, proj.shape[1] + 1), np.arange(-1, proj.shape[0] + 1), padded, levels=[0.5],
                   colors=[outline_colour], linewidths=1.0)
    halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    if mask is not None and number_lesions and proj is not None and proj.any():
        positions = lesion_positions_lps(mask, _lps(mask), spacing_zyx, lesions)
        for number, (z, _, x) in positions[:MAX_NUMBERED]:
            row = mip.shape[0] - 1 - z
            ax.annotate(str(number), (x, row), xytext=(6, 4), textcoords="offset points", fontsize=8,
                        fontweight="bold", color=outline_colour, path_effects=halo)
        if len(positions) > MAX_NUMBERED:
            ax.text(0.5, 0.07, f"numbers on the {MAX_NUMBERED} largest of {len(positions)} lesions",
                    transform=ax.transAxes, ha="center", va="bottom", fontsize=7, path_effects=halo)
    elif mask is not None:
        ax.text(0.5, 0.5, "no lesion found", transform=ax.transAxes, ha="center", va="center", fontsize=12,
                fontweight="bold", color="darkgreen", path_effects=halo)
    orientation_labels(ax, top="H", bottom="F", left="R", right="L")
    ax.set_axis_off()
    suv_colourbar(fig, (0.02 * img_w / fig_w + 0.96 * img_w / fig_w + 0.01, 0.1, 0.12 * bar_w / fig_w, 0.6),
                  "gray_r", vmax)
    ax.set_title(title or f"Coronal SUV MIP (0-{vmax:g}), segmentation outlined", fontsize=8)
    output_path = Path(output_path)
    with atomic_path(output_path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return output_path
