"""``case_metadata.json``: per-case lesion descriptors that curricula use as difficulty measures.

For each case (no identifiers; keyed by the pseudonymous case id) the converter records, from the label and the
SUV volume on the PET grid, via :func:`clips_nnunet.metrics.lesions.measure_lesions` (26-connected lesions):
TMTV (ml), number of lesions, SUVmax, SUVmean and total lesion glycolysis (TLG = SUVmean x TMTV) in lesions,
smallest and largest lesion volume (ml), Dmax (largest distance between lesion centroids, mm); plus the
lesion-to-background ratio (see :func:`lesion_to_background`), PET voxel spacing, vendor, split and the patient
group (``G{NNNN}``, used for patient-grouped splits).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from clips_nnunet.io_utils import PathLike, atomic_write_json

METADATA_NAME = "case_metadata.json"
BACKGROUND_SHELL_MM = (10.0, 30.0)
BODY_SUV_THRESHOLD = 0.1


def lesion_to_background(suv: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float],
                         shell_mm: Tuple[float, float] = BACKGROUND_SHELL_MM) -> Optional[float]:
    """Lesion-to-background ratio: SUVmean in the lesions / median SUV in a shell around them.

    The shell holds body voxels (SUV > 0.1, which excludes air) at a distance of ``shell_mm[0]`` to ``shell_mm[1]``
    mm from the nearest lesion voxel, so partial-volume spill-out near the edge is left out. Median, so that a
    neighbouring organ with high uptake (heart, bladder) does not dominate. ``None`` for an empty mask or when the
    shell is empty or has zero median.
    """
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    if not mask.any():
        return None
    suv = np.asarray(suv, dtype=np.float32)
    sampling = np.asarray([float(s) for s in spacing_zyx])
    margin = np.ceil(shell_mm[1] / sampling).astype(int) + 1
    try:  # cc3d labels a whole-body mask several times faster than ndimage.label; the grouping does not matter here
        import cc3d
        labels = cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=26)
    except ImportError:
        labels, _ = ndimage.label(mask)
    # exact distances, computed per lesion in its bounding box plus the shell width: a voxel outside that box is
    # farther than shell_mm[1] from the lesion, so whole-body distance maps are never needed; the shell is then
    # assembled only inside the union of those boxes
    crops = [tuple(slice(max(0, b.start - m), min(n, b.stop + m)) for b, m, n in zip(box, margin, mask.shape))
             for box in ndimage.find_objects(labels) if box is not None]
    region = tuple(slice(min(c[a].start for c in crops), max(c[a].stop for c in crops)) for a in range(mask.ndim))
    offset = [r.start for r in region]
    shape = tuple(r.stop - r.start for r in region)
    within = np.zeros(shape, dtype=bool)  # <= shell_mm[1] from some lesion voxel
    near = np.zeros(shape, dtype=bool)  # < shell_mm[0] from some lesion voxel
    for crop in crops:
        local = tuple(slice(c.start - o, c.stop - o) for c, o in zip(crop, offset))
        distance = ndimage.distance_transform_edt(~mask[crop], sampling=sampling)
        within[local] |= distance <= shell_mm[1]
        near[local] |= distance < shell_mm[0]
    shell = within & ~near & (suv[region] > BODY_SUV_THRESHOLD)
    if not shell.any():
        return None
    background = float(np.median(suv[region][shell]))
    if background <= 0:
        return None
    return float(suv[mask].mean()) / background


def case_metadata(mask: Optional[np.ndarray], suv: np.ndarray, spacing_zyx: Sequence[float],
                  vendor: Optional[str] = None, split: str = "train", group: Optional[str] = None,
                  extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Metadata of one case; ``mask`` None (test case without a label) gives only spacing, vendor, split, group."""
    from clips_nnunet.metrics.lesions import measure_lesions

    spacing = [float(s) for s in spacing_zyx]
    record: Dict[str, Any] = {"pet_spacing_zyx_mm": spacing, "vendor": vendor, "split": split,
                              "patient_group": group, "has_label": mask is not None}
    if mask is not None:
        summary = measure_lesions(np.asarray(mask), tuple(spacing), suv=np.asarray(suv)).to_dict()
        for key in ("tmtv_ml", "n_lesions", "suv_max", "suv_mean", "tlg", "smallest_lesion_ml",
                    "largest_lesion_ml", "dmax_mm"):
            record[key] = summary[key]
        record["lesion_volumes_ml"] = [round(float(les["volume_ml"]), 4) for les in summary["lesions"]]
        record["lesion_to_background"] = lesion_to_background(suv, mask, spacing)
    if extra:
        record.update(dict(extra))
    return record


def write_case_metadata(dataset_dir: PathLike, records: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``case_metadata.json`` (sorted keys) into the dataset folder; returns its path."""
    path = Path(dataset_dir) / METADATA_NAME
    atomic_write_json(path, {k: dict(v) for k, v in sorted(records.items())})
    return path
