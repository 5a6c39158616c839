"""Pictures of the audit page, as embedded PNG data URIs: the coronal SUV MIP of every case and, for a suspect case,
axial, coronal and sagittal planes through its finding, PET over CT.

Arrays are (z, y, x) in LPS index order (z towards the head, y towards posterior, x towards the patient's left), as
:func:`clips_nnunet.audit.page.read_case` gives them. Display is radiological: the patient's right on the viewer's
left in axial and coronal views, the head at the top of coronal and sagittal views, anterior at the top of axial and
on the left of sagittal views; each panel carries its orientation letters (R/L, A/P, H/F) and every picture an SUV
colour scale. Reference outlined solid (:data:`REFERENCE_COLOUR`), prediction dashed (:data:`PREDICTION_COLOUR`),
the finding ringed (:data:`FINDING_COLOUR`).
"""
from __future__ import annotations

import base64
import io
import math
from typing import Optional, Sequence

import numpy as np

REFERENCE_COLOUR = "#0a6cff"  # blue: reads on the white MIP and on the PET/CT fusion
PREDICTION_COLOUR = "#e6007e"  # magenta: not in the PET colour map
FINDING_COLOUR = "#00a000"  # green ring
CT_WINDOW = (-160.0, 240.0)  # soft-tissue window (level 40, width 400 HU)
PET_CMAP = "hot"


def _figure(width_in: float, height_in: float):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def _data_uri(fig, dpi: int) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _outline(ax, mask2d: np.ndarray, colour: str, style: str, width: float = 1.2) -> None:
    if mask2d.any():
        padded = np.pad(mask2d.astype(np.float32), 1)
        ax.contour(np.arange(-1, mask2d.shape[1] + 1), np.arange(-1, mask2d.shape[0] + 1), padded, levels=[0.5],
                   colors=[colour], linewidths=width, linestyles=style)


def _ring(ax, row: float, col: float, radius_px: float) -> None:
    from matplotlib.patches import Circle

    ax.add_patch(Circle((col, row), radius_px, fill=False, edgecolor=FINDING_COLOUR, linewidth=1.6))


def suv_display_max(suv: Optional[np.ndarray]) -> float:
    """The SUV shown in the top colour: 10 (the usual lymphoma window), or the image maximum if lower."""
    if suv is None or not np.size(suv):
        return 1.0
    return float(min(10.0, max(math.ceil(float(np.max(suv)) * 10.0) / 10.0, 0.1)))


def mip_picture(suv: Optional[np.ndarray], ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                finding_zyx: Optional[Sequence[float]] = None, dpi: int = 80) -> str:
    """Coronal MIP (max over y, head up) of the SUV, black = high uptake, with the reference and the prediction
    outlined, the finding ringed, R/L and H/F markers and an SUV scale."""
    from clips_nnunet.prediction.mip import coronal_mip, orientation_labels, suv_colourbar

    background = suv if suv is not None else np.zeros(ref.shape, dtype=np.float32)
    mip, ref_proj = coronal_mip(background, ref)
    _, pred_proj = coronal_mip(background, pred)
    mip, ref_proj, pred_proj = mip[::-1], ref_proj[::-1], pred_proj[::-1]
    vmax = suv_display_max(suv)
    h_mm, w_mm = mip.shape[0] * spacing[0], mip.shape[1] * spacing[2]
    img_w = 2.6
    img_h = float(np.clip(img_w * h_mm / max(w_mm, 1e-6), 1.5, 6.0))
    fig = _figure(img_w + 0.75, img_h)
    frac = img_w / (img_w + 0.75)
    ax = fig.add_axes((0, 0, frac, 1))
    ax.imshow(mip, cmap="gray_r", vmin=0.0, vmax=vmax, interpolation="nearest", aspect=spacing[0] / spacing[2])
    _outline(ax, ref_proj, REFERENCE_COLOUR, "solid")
    _outline(ax, pred_proj, PREDICTION_COLOUR, "dashed")
    if finding_zyx is not None:
        _ring(ax, mip.shape[0] - 1 - finding_zyx[0], finding_zyx[2], max(3.0, 0.05 * mip.shape[1]))
    orientation_labels(ax, top="H", bottom="F", left="R", right="L")
    ax.set_axis_off()
    if suv is not None:
        suv_colourbar(fig, (frac + 0.03, 0.15, 0.05, 0.6), "gray_r", vmax, fontsize=6)
    return _data_uri(fig, dpi)


#: The three planes and their orientation letters (top, bottom, left, right) as :func:`plane_cut` displays them.
PLANES = (("axial", ("A", "P", "R", "L")), ("coronal", ("H", "F", "R", "L")), ("sagittal", ("H", "F", "A", "P")))


def plane_cut(volume: np.ndarray, plane: str, centre_zyx: Sequence[int]) -> np.ndarray:
    """The 2-D image of ``plane`` through voxel ``centre_zyx`` of an LPS (z, y, x) volume, as displayed: row 0 at
    the top, column 0 at the left (the letters of :data:`PLANES`)."""
    z, y, x = (int(v) for v in centre_zyx)
    if plane == "axial":
        return volume[z]  # rows: y (anterior at the top), columns: x (patient's right at the left)
    if plane == "coronal":
        return volume[::-1, y, :]  # rows: z reversed (head at the top), columns: x
    if plane == "sagittal":
        return volume[::-1, :, x]  # rows: z reversed, columns: y (anterior at the left)
    raise ValueError(f"unknown plane {plane!r}; one of {[p for p, _ in PLANES]}")


def plane_position(plane: str, centre_zyx: Sequence[float], shape: Sequence[int]):
    """(row, column) of ``centre_zyx`` in :func:`plane_cut`'s image of ``plane``."""
    z, y, x = (float(v) for v in centre_zyx)
    return {"axial": (y, x), "coronal": (shape[0] - 1 - z, x), "sagittal": (shape[0] - 1 - z, y)}[plane]


def planes_picture(suv: Optional[np.ndarray], ct: Optional[np.ndarray], ref: np.ndarray, pred: np.ndarray,
                   spacing: Sequence[float], centre_zyx: Sequence[int], dpi: int = 110) -> str:
    """Axial, coronal and sagittal planes (:func:`plane_cut`) through voxel ``centre_zyx``: CT in grey (window -160
    to 240 HU) with the PET in colour over it (transparent up to 12 % of the display maximum, e.g. SUV 1.2 of 10,
    so that the CT shows through background uptake; opaque from 60 %), or the PET alone in grey without CT;
    reference and prediction outlined, the finding ringed, orientation letters and an SUV scale."""
    from matplotlib import colors

    from clips_nnunet.prediction.mip import orientation_labels, suv_colourbar

    sz, sy, sx = (float(v) for v in spacing)
    vmax = suv_display_max(suv)
    # displayed (row, column) spacing and extent in mm of each plane
    spacings = {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}
    widths = [ref.shape[2] * sx, ref.shape[2] * sx, ref.shape[1] * sy]
    heights = [ref.shape[1] * sy, ref.shape[0] * sz, ref.shape[0] * sz]
    panel_h = 2.8
    panel_w = [panel_h * w / max(h, 1e-6) for w, h in zip(widths, heights)]
    panel_w = [float(np.clip(w, 1.0, 4.5)) for w in panel_w]
    total_w = sum(panel_w) + 0.15 * 3 + 0.8
    fig = _figure(total_w, panel_h + 0.3)
    cmap = colors.LinearSegmentedColormap.from_list(
        "pet_alpha", [(0.0, (0, 0, 0, 0)), (0.12, (0.3, 0, 0, 0)), (0.3, (0.8, 0, 0, 0.6)), (0.6, (1, 0.55, 0, 0.9)),
                      (1.0, (1, 1, 0.7, 1))])
    left = 0.05
    for (title, letters), w in zip(PLANES, panel_w):
        ax = fig.add_axes((left / total_w, 0.02, w / total_w, panel_h / (panel_h + 0.3)))
        left += w + 0.15

        def show(a):
            return plane_cut(a, title, centre_zyx)

        row_sp, col_sp = spacings[title]
        aspect = row_sp / col_sp
        if ct is not None:
            ax.imshow(show(ct), cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], interpolation="bilinear",
                      aspect=aspect)
            if suv is not None:
                ax.imshow(show(suv), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="bilinear", aspect=aspect)
        elif suv is not None:
            ax.imshow(show(suv), cmap="gray_r", vmin=0.0, vmax=vmax, interpolation="bilinear", aspect=aspect)
        else:
            ax.imshow(np.zeros(show(ref).shape), cmap="gray_r", vmin=0.0, vmax=1.0, aspect=aspect)
        _outline(ax, show(ref), REFERENCE_COLOUR, "solid")
        _outline(ax, show(pred), PREDICTION_COLOUR, "dashed")
        r, c = plane_position(title, centre_zyx, ref.shape)
        _ring(ax, r, c, max(4.0, 0.06 * show(ref).shape[1]))
        dark = ct is not None
        orientation_labels(ax, *letters, colour="white" if dark else "black", halo="black" if dark else "white")
        ax.set_title(title, fontsize=8, pad=2)
        ax.set_axis_off()
    if suv is not None:
        suv_colourbar(fig, ((left + 0.05) / total_w, 0.12, 0.12 / total_w, 0.7),
                      _over_black(cmap) if ct is not None else "gray_r", vmax, fontsize=6)
    return _data_uri(fig, dpi)


def _over_black(cmap):
    """``cmap`` with its transparency composed over black: the colours the PET takes over dark tissue."""
    from matplotlib import colors

    rgba = cmap(np.linspace(0.0, 1.0, 256))
    return colors.ListedColormap(rgba[:, :3] * rgba[:, 3:4])
