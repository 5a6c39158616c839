"""The per-patient TMTV report of ``clips-nnunet predict``: ``report.json`` (machine) and ``report.md`` (people).

The numbers come from :func:`clips_nnunet.metrics.lesions.measure_lesions` on the predicted mask and the PET in
SUV (body weight) on the same grid:

* TMTV (ml) = number of lesion voxels x voxel volume;
* lesion count = connected components (26-connectivity, as TMTV-Net's report);
* SUVmax / SUVmean over all lesion voxels; TLG = TMTV x SUVmean (= sum of the lesions' volume x SUVmean);
* Dmax (mm) = largest distance between two lesion centroids (Cottereau et al., J Nucl Med 2020), 0 for one
  lesion or none (TMTV-Net's tool falls back to voxel units there; ours is always millimetres);
* a per-lesion table (volume, SUVmax, SUVmean, TLG, centroid in mm from the first voxel's centre) and, when the
  PET image is given, where to find each lesion (:func:`location_of`): its centroid in DICOM patient coordinates
  (LPS, mm: x towards the patient's left, y towards posterior, z towards the head, as DICOM viewers show them) and
  the PET slice that holds it (1-based, counted from the first slice of the PET volume, the series' slices sorted by
  position as the converter stacks them; with the slice's z in mm, which identifies it in any viewer).

Reports contain the pseudonymous case id only: no name, PatientID, birth date, study date or file path.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from clips_nnunet import __version__
from clips_nnunet.io_utils import PathLike, atomic_write_json, atomic_write_text

REPORT_VERSION = 2
SUMMARY_KEYS = ("tmtv_ml", "n_lesions", "suv_max", "suv_mean", "tlg", "dmax_mm", "smallest_lesion_ml",
                "largest_lesion_ml")


def location_of(image: Any, centre_zyx: Sequence[float]) -> Dict[str, Any]:
    """Where a point given as a continuous voxel index ``(z, y, x)`` of ``image`` (a SimpleITK image, in its own
    array order) lies: ``{"lps_mm": [x, y, z]`` (DICOM patient coordinates, mm, one decimal), ``"slice"`` (1-based
    index of the image slice holding it), ``"n_slices"``, ``"slice_z_mm"`` (that slice's patient z)``}``."""
    zyx = [float(v) for v in centre_zyx]
    point = image.TransformContinuousIndexToPhysicalPoint(zyx[::-1])
    n = int(image.GetSize()[2])
    k = int(min(max(round(zyx[0]), 0), n - 1))
    slice_point = image.TransformContinuousIndexToPhysicalPoint([zyx[2], zyx[1], float(k)])
    return {"lps_mm": [round(float(c), 1) for c in point], "slice": k + 1, "n_slices": n,
            "slice_z_mm": round(float(slice_point[2]), 1)}


def build_report(summary: Any, case_id: str, model: Optional[Dict[str, Any]] = None,
                 warnings: Sequence[str] = (), spacing_zyx: Optional[Sequence[float]] = None,
                 image: Any = None) -> Dict[str, Any]:
    """The report dict of one patient from a :class:`~clips_nnunet.metrics.lesions.LesionSummary`.

    Top-level keys: ``case``, the totals in :data:`SUMMARY_KEYS`, ``lesions`` (list of per-lesion dicts, largest
    first, each with ``index`` from 1; with ``image``, the PET SimpleITK image the mask was measured on, also
    ``centroid_lps_mm``, ``slice``, ``n_slices`` and ``slice_z_mm`` from :func:`location_of`), ``connectivity``,
    ``spacing_zyx_mm``, ``model`` (nnU-Net model folders, folds, checkpoint, device), ``warnings`` (conversion warnings), ``software`` and ``created`` (UTC time).
    """
    if not case_id or "/" in case_id or "\\" in case_id:
        raise ValueError(f"build_report: case_id must be a pseudonymous id without path separators, got {case_id!r}")
    data = summary.to_dict() if hasattr(summary, "to_dict") else dict(summary)
    missing = [k for k in ("tmtv_ml", "n_lesions", "dmax_mm", "lesions") if k not in data]
    if missing:
        raise ValueError(f"build_report: the lesion summary lacks {missing}; pass measure_lesions(...)'s result")
    lesions: List[Dict[str, Any]] = []
    own_spacing = [float(s) for s in (spacing_zyx if spacing_zyx is not None else data.get("spacing_zyx", []))]
    for i, les in enumerate(data["lesions"], start=1):
        les = dict(les)
        les.pop("bbox", None)
        if image is not None and les.get("centroid_mm") is not None and len(own_spacing) == 3:
            where = location_of(image, [c / s for c, s in zip(les["centroid_mm"], own_spacing)])
            les.update({"centroid_lps_mm": where["lps_mm"], "slice": where["slice"], "n_slices": where["n_slices"],
                        "slice_z_mm": where["slice_z_mm"]})
        lesions.append({"index": i, **les})
    report: Dict[str, Any] = {key: data.get(key) for key in SUMMARY_KEYS}
    report.update({
        "case": case_id,
        "lesions": lesions,
        "connectivity": data.get("connectivity"),
        "spacing_zyx_mm": [float(s) for s in (spacing_zyx if spacing_zyx is not None
                                              else data.get("spacing_zyx", []))],
        "model": model or {},
        "warnings": [str(w) for w in warnings],
        "software": f"clips-nnunet {__version__}",
        "report_version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })
    return report


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(report: Dict[str, Any]) -> str:
    """``report.md``: totals, model, warnings and the per-lesion table."""
    lines = [f"# TMTV report: {report['case']}", "",
             "| measure | value |", "|---|---|",
             f"| TMTV (ml) | {_fmt(report['tmtv_ml'])} |",
             f"| lesions | {report['n_lesions']} |",
             f"| SUVmax (g/ml) | {_fmt(report.get('suv_max'))} |",
             f"| SUVmean (g/ml) | {_fmt(report.get('suv_mean'))} |",
             f"| TLG (ml x SUV) | {_fmt(report.get('tlg'))} |",
             f"| Dmax (mm) | {_fmt(report['dmax_mm'], 1)} |",
             f"| smallest lesion (ml) | {_fmt(report.get('smallest_lesion_ml'))} |",
             f"| largest lesion (ml) | {_fmt(report.get('largest_lesion_ml'))} |", ""]
    lines += ["Lesions are connected components of the predicted mask "
              f"({report.get('connectivity')}-connectivity); Dmax is the largest distance between two lesion "
              "centroids (0 for a single lesion). SUV is body-weight SUV.", ""]
    if report["lesions"]:
        located = all("centroid_lps_mm" in les for les in report["lesions"])
        where = ("centre x, y, z (mm, patient LPS) | PET slice (z mm) |" if located
                 else "centroid z, y, x (mm from the first voxel) |")
        lines += ["## Lesions", "", "Numbers as on the MIP (largest first).", "",
                  f"| # | volume (ml) | voxels | SUVmax | SUVmean | TLG | {where}",
                  "|---|---|---|---|---|---|---|" + ("---|" if located else "")]
        for les in report["lesions"]:
            if located:
                centre = ", ".join(f"{c:.1f}" for c in les["centroid_lps_mm"])
                place = f"{centre} | {les['slice']} of {les['n_slices']} ({les['slice_z_mm']:.1f}) |"
            else:
                place = ", ".join(f"{c:.1f}" for c in les.get("centroid_mm", [])) + " |"
            lines.append(f"| {les['index']} | {_fmt(les.get('volume_ml'))} | {les.get('n_voxels', '')} | "
                         f"{_fmt(les.get('suv_max'))} | {_fmt(les.get('suv_mean'))} | {_fmt(les.get('tlg'))} | "
                         f"{place}")
        lines.append("")
        if located:
            lines += ["Patient coordinates are DICOM's (LPS: x towards the patient's left, y towards posterior, z "
                      "towards the head). PET slices are counted from 1 at the first slice of the PET volume (the "
                      "series' slices sorted by position); the slice's z locates it in any viewer.", ""]
    else:
        lines += ["**No lesion found**: the prediction is empty (TMTV 0 ml).", ""]
    model = report.get("model") or {}
    if model:
        lines += ["## Model", ""]
        for stage in model.get("stages", []):
            lines.append(f"- stage {stage.get('stage')}: `{stage.get('model')}`, folds {stage.get('folds')}")
        lines.append(f"- checkpoint `{model.get('checkpoint')}`, device {model.get('device')}")
        lines.append("")
    if report.get("warnings"):
        lines += ["## Conversion warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += [f"_{report.get('software')}, {report.get('created')}. Research use only; not a medical device._", ""]
    return "\n".join(lines)


def write_report(report: Dict[str, Any], folder: PathLike) -> Path:
    """Write ``report.md`` then ``report.json`` (the completion marker) atomically into ``folder``."""
    folder = Path(folder)
    atomic_write_text(folder / "report.md", render_markdown(report))
    atomic_write_json(folder / "report.json", report)
    return folder / "report.json"
