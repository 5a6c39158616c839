"""The twin as a DICOM study of the synthetic cohort (``clips-nnunet synth --phantom twin``).

:func:`render_twin_study` turns a :class:`~clips_nnunet.synthetic.phantom.StudySpec` (identity, vendor, weight,
height, dose, faults: the same specs as the box phantom) into the arrays that
:func:`clips_nnunet.synthetic.dicom_cohort.write_study` writes: PET SUV on the vendor's PET grid, the clean lesion
mask, the CT in HU, and the manifest's twin fields. :func:`annotate_study` plants a realistic annotator's error
(:mod:`~clips_nnunet.synthetic.twin_annotators`) on the SUV that the converter will read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np

from clips_nnunet.synthetic.phantom import GridSize, StudySpec
from clips_nnunet.synthetic.twin import TwinCase, make_twin, twin_difficulty, twin_grids
from clips_nnunet.synthetic.twin_annotators import annotate


@dataclass
class TwinStudy:
    """A rendered twin study: the grid pair, PET SUV (before DICOM quantisation), clean mask, CT HU, the case."""
    grid: GridSize
    suv: np.ndarray
    label: np.ndarray
    hu: np.ndarray
    case: TwinCase

    def manifest_fields(self) -> Dict[str, Any]:
        """The manifest entry's twin-specific fields: lesions (per lesion), holes, difficulty, twin summary."""
        s = self.case.summary
        lesions = list(s["lesions"])
        return {"lesions": lesions, "has_hole": any(r["necrotic"] for r in lesions),
                "difficulty": twin_difficulty(self.case),
                "twin": {k: v for k, v in s.items() if k != "lesions"}}


def render_twin_study(spec: StudySpec, size: str = "wholebody") -> TwinStudy:
    """Render the twin of one study spec on the vendor's grids (``wholebody``), the small grids (``small``) or the
    skull-base-to-thigh crop (``trunk``)."""
    pet_grid, ct_grid = twin_grids(size, spec.vendor)
    case = make_twin(spec.seed, weight_kg=spec.weight_kg, height_m=spec.height_m, sex=spec.sex,
                     grids=(pet_grid, ct_grid), study=size == "trunk")
    grid = GridSize(pet_grid.shape, pet_grid.spacing, ct_grid.shape, ct_grid.spacing)
    return TwinStudy(grid=grid, suv=case.pet, label=case.label, hu=case.ct, case=case)


def annotate_study(study: TwinStudy, gt_suv: np.ndarray, kind: str, seed: int) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The annotated mask and record of a twin study for error ``kind`` (random draws from ``[seed, 1]``)."""
    sites = {les.lesion_id: les.site for les in study.case.lesions}
    return annotate(study.case.lesion_ids, gt_suv, study.case.tissue, study.grid.pet_spacing, kind,
                    np.random.default_rng([seed, 1]), sites=sites)

