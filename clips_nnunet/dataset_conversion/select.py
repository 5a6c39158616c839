"""Choose, per study, the PET series, the CT series it pairs with and the mask objects drawn on them.

Rules (documented in docs/conversion_reading.md; every choice is recorded, without identifiers, in
:attr:`StudySelection.decisions`):

* **CT candidates**: Modality CT, CT Image Storage SOP classes only (dose reports, secondary captures and
  screenshots are other classes), ImageType without LOCALIZER/SCOUT/TOPOGRAM, series description not a dose report,
  at least 2 instances.
* **PET candidates**: Modality PT, PET Image Storage, at least 2 instances, CorrectedImage containing ATTN
  (non-attenuation-corrected "NAC" series are excluded), Units not PROPCPS, SeriesType not REPROJECTION and ImageType
  / SeriesType without MIP / REPROJECTION (maximum intensity projections).
* **Pairing**: a CT pairs with a PET only when they share the FrameOfReferenceUID (same scanner session, so world
  coordinates agree without registration).
* **Tie-break** (deterministic): PET: has a paired CT, ImageType ORIGINAL, more instances (longer axial coverage),
  lower SeriesNumber, smaller SeriesInstanceUID. CT: ImageType ORIGINAL, larger overlap of its slice extent with the
  PET's, more instances, lower SeriesNumber, smaller SeriesInstanceUID.
* **Masks**: SEG and RTSTRUCT objects of the same study that reference the chosen PET or CT series; an RTSTRUCT whose
  referenced series is absent from the export (e.g. drawn on a CT that was not exported) is accepted when it shares
  the PET's frame of reference and is rasterised on the CT grid (else the PET grid). Masks referencing another
  exported series (e.g. the NAC PET) are ignored. Order: by reference, SEG before RTSTRUCT, on-PET before on-CT.
  :attr:`StudySelection.mask_on` says which grid each mask belongs to.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..errors import PatientError
from .index import SeriesInfo, series_number

__all__ = ["StudySelection", "select_studies", "CT_SOP_CLASSES", "PET_SOP_CLASSES", "SEG_SOP_CLASS",
           "RTSTRUCT_SOP_CLASS"]

CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2"}  # CT Image Storage (single-frame)
ENHANCED_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2.1"
ENHANCED_PET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.130"
PET_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.128"}  # PET Image Storage (legacy single-frame; what scanners export)
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

_LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW")
_DOSE_WORDS = ("DOSE REPORT", "DOSE INFO", "PATIENT PROTOCOL", "DOSE SR", "SCREEN SAVE", "SCREENSHOT")


@dataclass
class StudySelection:
    """The series chosen for one study. ``decisions`` are human-readable and free of identifiers (series are named
    by modality, SeriesNumber and instance count; never by UID, date or the free-text SeriesDescription)."""

    patient_key: str
    study_uid: str
    ct: Optional[SeriesInfo]
    pet: SeriesInfo
    masks: List[SeriesInfo] = field(default_factory=list)
    decisions: List[str] = field(default_factory=list)
    #: 1-based chronological number of the study within the patient (identifier-free)
    study_index: int = 0
    #: mask series_uid -> "PET" or "CT": the grid to rasterise / read it on (then mask_to_grid to the PET)
    mask_on: Dict[str, str] = field(default_factory=dict)


def _name(s: SeriesInfo) -> str:
    """Identifier-free series name: SeriesDescription is free text (sites put patient names and IDs in it), so
    only the modality, SeriesNumber and instance count are used."""
    num = s.attributes.get("SeriesNumber")
    return f"{s.modality} series #{num if num is not None else '?'} ({s.n_instances} instances)"


def _upper_tuple(value) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (tuple, list)):
        return tuple(str(v).upper() for v in value)
    return tuple(str(value).upper().split("\\"))


def _ct_reject_reason(s: SeriesInfo) -> Optional[str]:
    if s.sop_class_uid == ENHANCED_CT_SOP_CLASS:
        return "multi-frame Enhanced CT is not supported; export the CT as single-frame (legacy) CT images"
    if s.sop_class_uid and s.sop_class_uid not in CT_SOP_CLASSES:
        return "not a CT image (SOP class is a dose report, secondary capture or other non-volume object)"
    it = tuple(x.upper() for x in s.image_type)
    if any(w in x for x in it for w in _LOCALIZER_WORDS):
        return "localizer/scout (ImageType " + "\\".join(it) + ")"
    desc = (s.series_description or "").upper()
    if any(w in desc for w in _DOSE_WORDS):
        return "dose report / screen capture (by its series description)"
    if s.n_instances < 2:
        return "single-image series (not a volume)"
    return None


def _pet_reject_reason(s: SeriesInfo) -> Optional[str]:
    if s.sop_class_uid == ENHANCED_PET_SOP_CLASS:
        return "multi-frame Enhanced PET is not supported; export the PET as single-frame (legacy) PET images"
    if s.sop_class_uid and s.sop_class_uid not in PET_SOP_CLASSES:
        return "not a single-frame PET Image Storage object"
    if s.n_instances < 2:
        return "single-image series (not a volume)"
    corrected = _upper_tuple(s.attributes.get("CorrectedImage"))
    if "ATTN" not in corrected:
        return "not attenuation corrected (CorrectedImage lacks ATTN: a NAC series)"
    units = str(s.attributes.get("Units", "")).upper()
    if units == "PROPCPS":
        return "Units PROPCPS (proportional counts, cannot be converted to SUV)"
    stype = _upper_tuple(s.attributes.get("SeriesType"))
    it = tuple(x.upper() for x in s.image_type)
    if any(x in ("REPROJECTION", "MIP") for x in stype) or any("MIP" == x or "REPROJECTION" == x for x in it):
        return "projection / MIP series (SeriesType or ImageType REPROJECTION/MIP)"
    return None


def _is_original(s: SeriesInfo) -> bool:
    return bool(s.image_type) and s.image_type[0].upper() == "ORIGINAL"


def _overlap(a: SeriesInfo, b: SeriesInfo) -> float:
    ea, eb = a.attributes.get("SliceExtent"), b.attributes.get("SliceExtent")
    if not ea or not eb:
        return 0.0
    return max(0.0, min(ea[1], eb[1]) - max(ea[0], eb[0]))


def _study_sort_key(item: Tuple[str, List[SeriesInfo]]) -> Tuple[str, str, str]:
    uid, series = item
    first = series[0].attributes if series else {}
    return (str(first.get("StudyDate", "")), str(first.get("StudyTime", "")), uid)


def _candidates(series: List[SeriesInfo], number: int, decisions: List[str]
                ) -> Tuple[List[SeriesInfo], List[SeriesInfo], List[SeriesInfo]]:
    """The usable PET and CT series and the mask objects (SEG, RTSTRUCT) of one study; every excluded image series
    is recorded in ``decisions`` with its reason (:func:`_pet_reject_reason`, :func:`_ct_reject_reason`)."""
    pets: List[SeriesInfo] = []
    cts: List[SeriesInfo] = []
    masks: List[SeriesInfo] = []
    for s in series:
        if s.modality == "PT":
            why = _pet_reject_reason(s)
            if why:
                decisions.append(f"study {number}: excluded {_name(s)}: {why}")
            else:
                pets.append(s)
        elif s.modality == "CT":
            why = _ct_reject_reason(s)
            if why:
                decisions.append(f"study {number}: excluded {_name(s)}: {why}")
            else:
                cts.append(s)
        elif s.modality in ("SEG", "RTSTRUCT"):
            masks.append(s)
    return pets, cts, masks


def _paired(pet: SeriesInfo, cts: List[SeriesInfo]) -> List[SeriesInfo]:
    """The CT series that share ``pet``'s frame of reference (the same scanner session)."""
    return [c for c in cts if c.frame_of_reference_uid and c.frame_of_reference_uid == pet.frame_of_reference_uid]


def _choose_pet(pets: List[SeriesInfo], cts: List[SeriesInfo], number: int, decisions: List[str]) -> SeriesInfo:
    """The PET series by the tie-break rule (paired CT, ORIGINAL, most slices, lowest series number, UID)."""
    pets = sorted(pets, key=lambda p: (not _paired(p, cts), not _is_original(p), -p.n_instances, series_number(p),
                                       p.series_uid))
    pet = pets[0]
    if len(pets) > 1:
        decisions.append(
            f"study {number}: {len(pets)} usable PET series; chose {_name(pet)} (rule: paired CT, ORIGINAL, most "
            f"slices, lowest series number); not chosen: " + ", ".join(_name(p) for p in pets[1:]))
    else:
        decisions.append(f"study {number}: PET {_name(pet)}")
    return pet


def _choose_ct(pet: SeriesInfo, cts: List[SeriesInfo], number: int, decisions: List[str]) -> Optional[SeriesInfo]:
    """The CT series paired with ``pet`` by the tie-break rule (ORIGINAL, largest axial overlap, most slices,
    lowest series number, UID); None when no CT shares the PET's frame of reference."""
    candidates = sorted(_paired(pet, cts), key=lambda c: (not _is_original(c), -_overlap(c, pet), -c.n_instances,
                                                          series_number(c), c.series_uid))
    if not candidates:
        if cts:
            decisions.append(f"study {number}: no CT shares the PET's frame of reference ({len(cts)} CT series in "
                             f"other frames of reference were not paired); no CT for this study")
        else:
            decisions.append(f"study {number}: no usable CT series; no CT for this study")
        return None
    ct = candidates[0]
    if len(candidates) > 1:
        decisions.append(
            f"study {number}: {len(candidates)} CT series share the PET's frame of reference; chose {_name(ct)}"
            f" (rule: ORIGINAL, largest axial overlap with the PET, most slices, lowest series number); "
            f"not chosen: " + ", ".join(_name(c) for c in candidates[1:]))
    else:
        decisions.append(f"study {number}: CT {_name(ct)} (same frame of reference as the PET)")
    return ct


def _choose_masks(masks: List[SeriesInfo], pet: SeriesInfo, ct: Optional[SeriesInfo], series: List[SeriesInfo],
                  number: int, decisions: List[str]) -> Tuple[List[SeriesInfo], Dict[str, str]]:
    """The mask objects drawn on the chosen PET or CT (by reference, or an RTSTRUCT by frame of reference), in
    the order SEG before RTSTRUCT, on-PET before on-CT, and the grid each is read on (``mask_on``)."""
    image_uids = {pet.series_uid: "PET"}
    if ct is not None:
        image_uids[ct.series_uid] = "CT"
    present = {s.series_uid for s in series}
    chosen: List[Tuple[Tuple[int, int, int, str], SeriesInfo]] = []
    mask_on: Dict[str, str] = {}
    for m in masks:
        on = sorted({image_uids[u] for u in m.referenced_series_uids if u in image_uids}, reverse=True)
        kind = 0 if m.modality == "SEG" else 1
        if on:
            chosen.append(((0, kind, 0 if on[0] == "PET" else 1, m.series_uid), m))
            mask_on[m.series_uid] = on[0]
            decisions.append(f"study {number}: mask {_name(m)} drawn on the {on[0]}")
        elif m.referenced_series_uids & present:
            decisions.append(f"study {number}: ignored mask {_name(m)}: it references another image series of "
                             f"this study, not the chosen PET or CT")
        elif (m.frame_of_reference_uid and m.frame_of_reference_uid == pet.frame_of_reference_uid
              and m.modality == "RTSTRUCT"):
            # contours are in world coordinates: any grid of the frame of reference can hold them; the CT's
            # finer grid keeps small lesions, then mask_to_grid brings the mask to the PET
            grid = "CT" if ct is not None else "PET"
            chosen.append(((1, kind, 0 if grid == "PET" else 1, m.series_uid), m))
            mask_on[m.series_uid] = grid
            decisions.append(f"study {number}: mask {_name(m)} references an image series that is not in the "
                             f"export; matched by frame of reference and rasterised on the {grid} grid")
        else:
            decisions.append(f"study {number}: ignored mask {_name(m)}: it references neither the chosen series"
                             f" nor (RTSTRUCT only) their frame of reference")
    chosen.sort(key=lambda t: t[0])
    return [m for _, m in chosen], mask_on


def _select_study(number: int, study_uid: str, series: List[SeriesInfo]) -> Tuple[Optional[StudySelection], str]:
    """``(selection, "")`` for one study (the ``number``-th of its patient), or ``(None, why it was skipped)``
    when it has no usable PET series."""
    decisions: List[str] = []
    pets, cts, masks = _candidates(series, number, decisions)
    if not pets:
        return None, (f"study {number}: skipped, no usable PET series"
                      + (f" ({'; '.join(d.split(': ', 1)[1] for d in decisions)})" if decisions else ""))
    pet = _choose_pet(pets, cts, number, decisions)
    ct = _choose_ct(pet, cts, number, decisions)
    chosen_masks, mask_on = _choose_masks(masks, pet, ct, series, number, decisions)
    return StudySelection(patient_key=pet.patient_key, study_uid=study_uid, ct=ct, pet=pet, masks=chosen_masks,
                          decisions=decisions, study_index=number, mask_on=mask_on), ""


def select_studies(studies: Dict[str, List[SeriesInfo]], patient_label: str) -> List[StudySelection]:
    """Choose PET, paired CT and masks for every study of one patient.

    ``studies`` is ``DicomIndex.patients[patient_key]``. ``patient_label`` is the pseudonymous label used in error
    messages (never pass the PatientID). Studies are visited in chronological order (StudyDate/Time, then UID) and
    numbered from 1 in the decisions; a study without a usable PET is skipped and the skip recorded in the
    decisions of every returned selection. Raises :class:`PatientError` when no study has a usable PET series.

    The steps, one function each: :func:`_candidates` (usable series, exclusions recorded) -> :func:`_choose_pet`
    -> :func:`_choose_ct` -> :func:`_choose_masks`, per study in :func:`_select_study`.
    """
    if not isinstance(studies, dict):
        raise TypeError(f"studies must be a dict study_uid -> list[SeriesInfo], got {type(studies).__name__}")
    selections: List[StudySelection] = []
    skipped: List[str] = []
    for number, (study_uid, series) in enumerate(sorted(studies.items(), key=_study_sort_key), start=1):
        selection, why_skipped = _select_study(number, study_uid, series)
        if selection is None:
            skipped.append(why_skipped)
        else:
            selections.append(selection)
    if not selections:
        detail = "; ".join(skipped) if skipped else "no studies"
        raise PatientError(patient_label, f"no usable PET series ({detail}). Export the attenuation-corrected PET "
                                          f"(CorrectedImage with ATTN, Units BQML/CNTS/GML) with this patient.")
    for sel in selections:
        sel.decisions = skipped + sel.decisions
    return selections
