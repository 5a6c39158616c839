"""Lesion measurement on a segmentation mask: TMTV, lesion count, SUV statistics, TLG and Dmax.

All measurements are in physical units: volumes in millilitres (``voxel count * prod(spacing_mm) / 1000``),
distances in millimetres (voxel indices multiplied by the per-axis spacing, so anisotropic voxels are right),
SUV in the units of the PET array given (normally body-weight SUV in g/ml).

Definitions (the ones used by TMTV-Net, Girum et al. and the autoPET challenge):

* **lesion**: a connected component of the foreground (``mask > 0``) with the chosen ``connectivity``
  (26 = faces, edges and corners, the default and what TMTV-Net's report uses; 18 = faces and edges, what the
  autoPET evaluation script uses for its false-positive / false-negative volumes; 6 = faces only).
* **TMTV** (total metabolic tumour volume, ml) = sum of lesion volumes.
* **SUVmax** = maximum SUV over all lesion voxels; **SUVmean** = mean SUV over all lesion voxels (voxel-weighted,
  not the mean of per-lesion means).
* **TLG** (total lesion glycolysis, ml * SUV) = sum over lesions of ``volume_ml * SUVmean`` = ``voxel_ml * sum(SUV)``.
* **Dmax** (mm) = largest Euclidean distance between the centroids of two lesions (Cottereau et al., J Nucl Med
  2020). It is 0 for a single lesion and for no lesion (TMTV-Net falls back to voxel units there; we do not).

Centroids are in millimetres in the array's own frame (voxel index times spacing, axis order z, y, x), i.e. relative
to the centre of voxel (0, 0, 0); they are for distances, not for world (scanner) coordinates.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

VALID_CONNECTIVITY = (6, 18, 26)


@dataclass(frozen=True)
class Lesion:
    """One connected component of a mask.

    ``bbox`` is ``(z0, y0, x0, z1, y1, x1)`` in voxel indices, half-open (``mask[z0:z1, y0:y1, x0:x1]``).
    SUV fields are ``None`` when no PET was given.
    """

    volume_ml: float
    n_voxels: int
    suv_max: Optional[float]
    suv_mean: Optional[float]
    tlg: Optional[float]
    centroid_mm: Tuple[float, float, float]
    bbox: Tuple[int, int, int, int, int, int]

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["centroid_mm"] = [float(c) for c in self.centroid_mm]
        d["bbox"] = [int(b) for b in self.bbox]
        return d


@dataclass(frozen=True)
class LesionSummary:
    """Per-mask summary; ``lesions`` is sorted by decreasing volume (ties by position)."""

    tmtv_ml: float
    n_lesions: int
    suv_max: Optional[float]
    suv_mean: Optional[float]
    tlg: Optional[float]
    smallest_lesion_ml: float
    largest_lesion_ml: float
    dmax_mm: float
    spacing_zyx: Tuple[float, float, float]
    connectivity: int
    lesions: List[Lesion] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict (plain floats/ints/lists; ``None`` where no PET was given)."""
        return {
            "tmtv_ml": float(self.tmtv_ml),
            "n_lesions": int(self.n_lesions),
            "suv_max": None if self.suv_max is None else float(self.suv_max),
            "suv_mean": None if self.suv_mean is None else float(self.suv_mean),
            "tlg": None if self.tlg is None else float(self.tlg),
            "smallest_lesion_ml": float(self.smallest_lesion_ml),
            "largest_lesion_ml": float(self.largest_lesion_ml),
            "dmax_mm": float(self.dmax_mm),
            "spacing_zyx": [float(s) for s in self.spacing_zyx],
            "connectivity": int(self.connectivity),
            "lesions": [les.to_dict() for les in self.lesions],
        }


def validate_spacing(spacing_zyx: Sequence[float], name: str = "spacing_zyx") -> Tuple[float, float, float]:
    """Return ``spacing_zyx`` as a tuple of three positive finite floats, or raise ``ValueError`` saying why."""
    try:
        sp = tuple(float(s) for s in spacing_zyx)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers (mm, order z, y, x), got {spacing_zyx!r}") from None
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"{name} must be three positive finite numbers (mm, order z, y, x), got {spacing_zyx!r}; "
                         f"note SimpleITK's GetSpacing() is (x, y, z): reverse it")
    return sp  # type: ignore[return-value]


def validate_connectivity(connectivity: int) -> int:
    if connectivity not in VALID_CONNECTIVITY:
        raise ValueError(f"connectivity must be one of {VALID_CONNECTIVITY} (3D neighbourhood), got {connectivity!r}")
    return int(connectivity)


def as_binary_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """``mask > 0`` as a C-contiguous bool (z, y, x) array; raises ``ValueError`` for non-3D input."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a 3D (z, y, x) array, got shape {mask.shape}; "
                         f"squeeze channel axes before measuring")
    if mask.dtype == bool:
        return np.ascontiguousarray(mask)
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise ValueError(f"{name} must be a bool or numeric array, got dtype {mask.dtype}")
    return np.ascontiguousarray(mask > 0)


def label_components(mask: np.ndarray, connectivity: int = 26) -> Tuple[np.ndarray, int]:
    """Connected components of ``mask > 0`` with cc3d: ``(labels, n)``; labels 1..n, background 0."""
    import cc3d

    binary = as_binary_mask(mask)
    validate_connectivity(connectivity)
    labels, n = cc3d.connected_components(binary, connectivity=connectivity, return_N=True)
    return labels, int(n)


def measure_lesions(mask: np.ndarray, spacing_zyx: Tuple[float, float, float], suv: Optional[np.ndarray] = None,
                    connectivity: int = 26) -> LesionSummary:
    """Measure every lesion (connected component of ``mask > 0``) and the whole-body totals.

    Args:
        mask: (z, y, x) bool or integer label map; every label > 0 counts as lesion.
        spacing_zyx: voxel size in mm in array axis order (z, y, x). SimpleITK's ``GetSpacing()`` is (x, y, z).
        suv: optional PET (SUV) array of the same shape, on the same grid, for SUVmax, SUVmean and TLG.
        connectivity: 6, 18 or 26 (see module docstring).

    Returns:
        A :class:`LesionSummary`. With no lesion: TMTV 0, count 0, Dmax 0, smallest/largest 0, SUV fields ``None``.
    """
    binary = as_binary_mask(mask)
    sp = validate_spacing(spacing_zyx)
    connectivity = validate_connectivity(connectivity)
    if suv is not None:
        suv = np.asarray(suv)
        if suv.shape != binary.shape:
            raise ValueError(f"suv shape {suv.shape} differs from mask shape {binary.shape}; resample the PET onto "
                             f"the mask grid (or the mask onto the PET grid) first")
        fg_suv = suv[binary].astype(np.float64)  # the lesion voxels only (whole-body volumes: ~10^7 voxels)
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0

    labels, n = label_components(binary, connectivity)
    lesions: List[Lesion] = []
    if n:
        import cc3d

        stats = cc3d.statistics(labels)
        counts = np.asarray(stats["voxel_counts"], dtype=np.int64)
        centroids = np.asarray(stats["centroids"], dtype=np.float64)
        boxes = stats["bounding_boxes"]
        if suv is not None:  # per-label sums and maxima over foreground voxels only
            fg_lab = labels[binary].astype(np.int64)
            sums = np.bincount(fg_lab, weights=fg_suv, minlength=n + 1)
            order = np.lexsort((fg_suv, fg_lab))  # last entry of each label run is its maximum
            last = np.r_[fg_lab[order][1:] != fg_lab[order][:-1], True]
            maxima = np.full(n + 1, -np.inf)
            maxima[fg_lab[order][last]] = fg_suv[order][last]
        for i in range(1, n + 1):
            vol = counts[i] * voxel_ml
            if suv is not None:
                mean = float(sums[i] / counts[i])
                s_max, s_mean, tlg = float(maxima[i]), mean, float(vol * mean)
            else:
                s_max = s_mean = tlg = None
            box = boxes[i]
            lesions.append(Lesion(
                volume_ml=float(vol), n_voxels=int(counts[i]), suv_max=s_max, suv_mean=s_mean, tlg=tlg,
                centroid_mm=tuple(float(centroids[i, a] * sp[a]) for a in range(3)),  # type: ignore[arg-type]
                bbox=(box[0].start, box[1].start, box[2].start, box[0].stop, box[1].stop, box[2].stop)))
        lesions.sort(key=lambda les: (-les.n_voxels, les.bbox))

    total_vox = int(sum(les.n_voxels for les in lesions))
    tmtv = total_vox * voxel_ml
    if suv is not None and lesions:
        suv_max, suv_mean = float(fg_suv.max()), float(fg_suv.mean())
        tlg = float(tmtv * suv_mean)
    else:
        suv_max = suv_mean = tlg = None
    return LesionSummary(
        tmtv_ml=float(tmtv), n_lesions=len(lesions), suv_max=suv_max, suv_mean=suv_mean, tlg=tlg,
        smallest_lesion_ml=min((les.volume_ml for les in lesions), default=0.0),
        largest_lesion_ml=max((les.volume_ml for les in lesions), default=0.0),
        dmax_mm=dmax_from_centroids([les.centroid_mm for les in lesions]),
        spacing_zyx=sp, connectivity=connectivity, lesions=lesions)


def dmax_from_centroids(centroids_mm: Sequence[Sequence[float]]) -> float:
    """Largest Euclidean distance (mm) between any two centroids; 0.0 for fewer than two."""
    if len(centroids_mm) < 2:
        return 0.0
    from scipy.spatial.distance import pdist

    pts = np.asarray(centroids_mm, dtype=np.float64)
    if len(pts) > 1000:  # the farthest pair lies on the convex hull: keep memory O(hull) for noisy predictions
        try:
            from scipy.spatial import ConvexHull

            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # flat (coplanar/collinear) point sets: fall back to all pairs
            pass
    return float(pdist(pts).max())
