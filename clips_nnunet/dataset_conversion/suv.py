"""Body-weight SUV from DICOM PET: the QIBA vendor-neutral algorithm as refined by the IBSI SUV manual.

    SUVbw = C(t) * W / D(t_ref)

with C the activity concentration (Bq/ml) after RescaleSlope/Intercept, W the body weight in g and D the injected
activity decayed to the time the image is decay-corrected to. References: QIBA "Vendor-neutral pseudo-code for
SUV calculation" (QIBA FDG-PET/CT technical committee, 2013, wiki.nci.nih.gov/x/yBAqEg); IBSI SUV computation
manual (Vacha et al., oncoray/suv_computation); Kinahan et al., "PET/CT Standardized Uptake Values (SUVs) in
clinical practice and assessing response to therapy", Semin. Ultrasound CT MR 31 (2010) 496-505.

Steps (each decision is documented in docs/conversion_reading.md):

1. Gate: CorrectedImage (0028,0051) contains ATTN and DECY (DECY may be absent only with DecayCorrection NONE,
   which we then correct ourselves); the second value of SeriesType (0054,1000), when present, is IMAGE.
2. Units (0054,1001): BQML continue; CNTS (Philips): SUV = value * (7053,1000) when present and non-zero, else
   value * (7053,1009) gives Bq/ml and we continue (the private creator (7053,0010) may be missing: the raw tags
   are read); GML / CM2ML: the values already are an SUV of type SUVType (0054,1006) (BW when absent) and are
   converted to body weight from weight, height and sex (LBM: Morgan, LBMJAMES128: James, LBMJANMA:
   Janmahasatian; BSA: DuBois; IBW: 48.0 / 45.5 kg + 1.06 / 0.91 kg per cm above 152 cm; PatientSex O: the mean of
   the male and female values, as the IBSI manual proposes); anything else is an error.
3. Weight (0010,1030) in kg; a value above 1000 was entered in grams. Dose (0018,1074) in Bq; a value below 1e5
   can only be MBq (no imaging activity is below 0.1 MBq, none is above 100 GBq) and is multiplied by 1e6.
   Half-life (0018,1075) in s.
4. Decay: DecayCorrection (0054,1102) ADMIN: the image is corrected to the injection, D = dose; START: D = dose *
   2^(-(t_ref - t_inj) / T1/2); NONE: per slice, D = dose * 2^(-(t_acq - t_inj) / T1/2) * (1 - e^(-l d)) / (l d)
   with t_acq the slice's AcquisitionDate/Time, d its ActualFrameDuration (0018,1242) and l = ln 2 / T1/2 (the
   mean of the decaying activity over the frame).
5. t_inj: RadiopharmaceuticalStartDateTime (0018,1078), else RadiopharmaceuticalStartTime (0018,1072) on the
   series date; with a time only, an injection that would fall after the reference time happened the day before
   (scan across midnight), so one day is subtracted.
6. t_ref: SeriesDate/SeriesTime, unless it is later than the earliest AcquisitionDate/Time of the series (the
   series time was reset by post-processing); then the GE private decay-correction date-time (0009,100D) when
   present, else the series start back-computed from the earliest acquired slice (IBSI manual, QIBA step 4;
   DICOM PS3.3 C.8.9.4.1.5): t_acq + T_ave - FrameReferenceTime with T_ave = ln(l T / (1 - e^(-l T))) / l for
   ActualFrameDuration T, used only with valid frame times (FrameReferenceTime >= T_ave > 0) and never when it
   falls after the earliest acquisition; else the earliest acquisition date-time.

Missing weight, dose, half-life or times raise :class:`PatientError` naming the patient label and the tag, unless a
:class:`~clips_nnunet.dataset_conversion.overrides.SuvOverrides` supplies the value (an override always wins).
"""
from __future__ import annotations

import datetime as _dt
import math
import struct
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk

from clips_nnunet.io_utils import PathLike

from ..errors import PatientError
from .overrides import SuvOverrides

__all__ = ["suv_factor", "series_suv_factors", "read_pet_suv", "read_pet_suv_with_headers", "series_earliest_acquisition",
           "acquisition_start", "series_acquisition_start", "lean_body_mass", "lean_body_mass_james",
           "body_surface_area_dubois", "ideal_body_weight", "MBQ_THRESHOLD", "GRAMS_THRESHOLD"]


#: Doses below this value (in the Bq field) are read as MBq.
MBQ_THRESHOLD = 1e5
#: Weights above this value (in the kg field) are read as grams.
GRAMS_THRESHOLD = 1000.0

PHILIPS_SUV_SCALE = (0x7053, 0x1000)
PHILIPS_ACTIVITY_SCALE = (0x7053, 0x1009)
GE_DECAY_DATETIME = (0x0009, 0x100D)


# --------------------------------------------------------------------------------------------- date/time helpers
def _parse_date(value: Any) -> Optional[_dt.date]:
    text = str(value or "").strip()
    if len(text) < 8:
        return None
    try:
        return _dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _parse_time(value: Any) -> Optional[_dt.time]:
    text = str(value or "").strip().replace(":", "")
    if not text:
        return None
    main, _, frac = text.partition(".")
    try:
        hh = int(main[0:2])
        mm = int(main[2:4]) if len(main) >= 4 else 0
        ss = int(main[4:6]) if len(main) >= 6 else 0
        us = int(round(float("0." + frac) * 1e6)) if frac else 0
        if us >= 1_000_000:
            us = 999_999
        return _dt.time(hh, mm, ss, us)
    except ValueError:
        return None


def _parse_dt(value: Any) -> Optional[_dt.datetime]:
    """DICOM DT ``YYYYMMDDHHMMSS.FFFFFF&ZZXX``; the UTC offset is dropped (all times of one scan share it)."""
    text = str(value or "").strip()
    for sep in ("+", "-"):
        if sep in text[8:]:
            text = text[: 8 + text[8:].index(sep)]
    d = _parse_date(text[:8])
    if d is None:
        return None
    t = _parse_time(text[8:]) if len(text) > 8 else _dt.time(0, 0)
    if t is None:
        return None
    return _dt.datetime.combine(d, t)


def _combine(date_value: Any, time_value: Any) -> Optional[_dt.datetime]:
    d, t = _parse_date(date_value), _parse_time(time_value)
    if d is None or t is None:
        return None
    return _dt.datetime.combine(d, t)


def _raw_value(ds: pydicom.Dataset, tag: Tuple[int, int]) -> Any:
    """Value of a (private) tag read by number, whether or not its private creator is present.

    Without a private creator pydicom gives VR UN and raw bytes: decoded as text (DS/DT as written by Philips
    and GE), else as a little-endian double or float.
    """
    if tag not in ds:
        return None
    value = ds[tag].value
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        try:
            text = raw.decode("ascii").strip("\x00 ").strip()
            if text:
                return text
        except UnicodeDecodeError:
            pass
        if len(raw) == 8:
            return struct.unpack("<d", raw)[0]
        if len(raw) == 4:
            return struct.unpack("<f", raw)[0]
        return None
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return value[0] if len(value) else None
    return value


def _float_or_none(value: Any) -> Optional[float]:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _upper_list(value: Any) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip().upper() for v in value.split("\\")]
    return [str(v).strip().upper() for v in value]


# ------------------------------------------------------------------------------------------ body size formulas
def _by_sex(male: float, female: float, sex: str, what: str) -> float:
    """The sex-specific value; PatientSex O (other): their mean, as the IBSI SUV manual proposes."""
    if sex == "M":
        return male
    if sex == "F":
        return female
    if sex == "O":
        return 0.5 * (male + female)
    raise ValueError(f"sex must be 'M', 'F' or 'O' for {what}, got {sex!r}")


def lean_body_mass(weight_kg: float, height_m: float, sex: str, suv_type: str = "LBMJAMES128") -> float:
    """Lean body mass (kg) for an SUVType (0054,1006), as listed in the IBSI SUV manual (after Sugawara et al.).

    ``LBM`` (Morgan): male 1.10 W - 120 (W/H)^2, female 1.07 W - 148 (W/H)^2; ``LBMJAMES128`` (James): male
    1.10 W - 128 (W/H)^2, female 1.07 W - 148 (W/H)^2; ``LBMJANMA`` (Janmahasatian): male 9270 W / (6680 + 216
    BMI), female 9270 W / (8780 + 244 BMI). W in kg, H in cm, BMI = W / (H/100)^2. Sex ``O``: mean of both.
    """
    h_cm = 100.0 * height_m
    ratio2 = (weight_kg / h_cm) ** 2
    if suv_type == "LBM":
        male, female = 1.10 * weight_kg - 120.0 * ratio2, 1.07 * weight_kg - 148.0 * ratio2
    elif suv_type == "LBMJAMES128":
        male, female = 1.10 * weight_kg - 128.0 * ratio2, 1.07 * weight_kg - 148.0 * ratio2
    elif suv_type == "LBMJANMA":
        bmi = weight_kg / height_m ** 2
        male, female = 9270.0 * weight_kg / (6680.0 + 216.0 * bmi), 9270.0 * weight_kg / (8780.0 + 244.0 * bmi)
    else:
        raise ValueError(f"unknown lean body mass SUVType {suv_type!r} (LBM, LBMJAMES128, LBMJANMA)")
    return _by_sex(male, female, sex, "lean body mass")


def lean_body_mass_james(weight_kg: float, height_m: float, sex: str) -> float:
    """Lean body mass (kg), James (1976): male 1.10 W - 128 (W/H)^2, female 1.07 W - 148 (W/H)^2, H in cm."""
    return lean_body_mass(weight_kg, height_m, sex, "LBMJAMES128")


def body_surface_area_dubois(weight_kg: float, height_m: float) -> float:
    """Body surface area (m^2), DuBois & DuBois (1916): 0.007184 W^0.425 H^0.725 (W kg, H cm)."""
    return 0.007184 * weight_kg ** 0.425 * (100.0 * height_m) ** 0.725


def ideal_body_weight(height_m: float, sex: str) -> float:
    """Ideal body weight (kg): male 48.0 + 1.06 (H - 152), female 45.5 + 0.91 (H - 152), H in cm; sex O (other):
    the mean of both (IBSI SUV manual)."""
    h_cm = 100.0 * height_m
    return _by_sex(48.0 + 1.06 * (h_cm - 152.0), 45.5 + 0.91 * (h_cm - 152.0), sex, "ideal body weight")


# ------------------------------------------------------------------------------------------------- the factor
def _weight_kg(ds: pydicom.Dataset, ov: SuvOverrides, label: str) -> float:
    if ov.weight_kg is not None:
        return float(ov.weight_kg)
    w = _float_or_none(ds.get("PatientWeight"))
    if w is None or w <= 0:
        raise PatientError(label, "PatientWeight (0010,1030) is missing or zero; SUV needs the body weight. Add "
                                  "weight_kg for this patient to the --overrides CSV")
    return w / 1000.0 if w > GRAMS_THRESHOLD else w


def _height_sex(ds: pydicom.Dataset, ov: SuvOverrides, label: str, what: str) -> Tuple[float, str]:
    h = ov.height_m if ov.height_m is not None else _float_or_none(ds.get("PatientSize"))
    if h is not None and h > 3.0:  # entered in cm
        h = h / 100.0
    sex = ov.sex if ov.sex is not None else str(ds.get("PatientSex", "") or "").strip().upper()
    if h is None or h <= 0:
        raise PatientError(label, f"converting {what} to body-weight SUV needs PatientSize (0010,1020); add height_m "
                                  f"to the --overrides CSV")
    if what != "BSA" and sex not in ("M", "F", "O"):
        raise PatientError(label, f"converting {what} to body-weight SUV needs PatientSex (0010,0040) M, F or O, got "
                                  f"{sex or 'none'}; add sex to the --overrides CSV")
    return float(h), sex


def series_earliest_acquisition(headers: Sequence[pydicom.Dataset]) -> Optional[_dt.datetime]:
    """Earliest AcquisitionDate/AcquisitionTime over the slices of a series (None when no slice has both)."""
    times = [_combine(h.get("AcquisitionDate") or h.get("SeriesDate"), h.get("AcquisitionTime")) for h in headers]
    times = [t for t in times if t is not None]
    return min(times) if times else None


def acquisition_start(ds: pydicom.Dataset, half_life_s: float) -> Optional[_dt.datetime]:
    """The series start back-computed from one slice: t_acq + T_ave - dt (IBSI SUV manual, QIBA step 4).

    t_acq is the slice's AcquisitionDate/Time, dt its FrameReferenceTime (0054,1300) (the offset of the frame's
    reference time from the series reference time, DICOM PS3.3 C.8.9.4.1.5) and T_ave = ln(l T / (1 - e^(-l T))) / l
    the average count rate time within a frame of ActualFrameDuration (0018,1242) T, l = ln 2 / half-life. None when
    one of these attributes is missing or the frame times are not valid: QIBA back-computes only from a positive
    FrameReferenceTime and ActualFrameDuration, and a frame's reference time lies at least T_ave after the series
    start (FrameReferenceTime 0 would put the start after the slice's own acquisition, which is impossible).
    """
    t_acq = _combine(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime"))
    ref_ms = _float_or_none(ds.get("FrameReferenceTime"))
    dur_ms = _float_or_none(ds.get("ActualFrameDuration"))
    if t_acq is None or ref_ms is None or dur_ms is None or ref_ms <= 0 or dur_ms <= 0 or half_life_s <= 0:
        return None
    lam = math.log(2.0) / half_life_s
    lt = lam * dur_ms / 1000.0
    t_ave = math.log(lt / -math.expm1(-lt)) / lam
    if ref_ms / 1000.0 < t_ave:
        return None
    return t_acq + _dt.timedelta(seconds=t_ave - ref_ms / 1000.0)


def series_acquisition_start(headers: Sequence[pydicom.Dataset], half_life_s: float) -> Optional[_dt.datetime]:
    """:func:`acquisition_start` of the series' earliest acquired slice(s) (None when they lack the attributes)."""
    earliest = series_earliest_acquisition(headers)
    if earliest is None:
        return None
    starts = [acquisition_start(h, half_life_s) for h in headers
              if _combine(h.get("AcquisitionDate") or h.get("SeriesDate"), h.get("AcquisitionTime")) == earliest]
    starts = [t for t in starts if t is not None]
    return min(starts) if starts else None


def _reference_time(ds: pydicom.Dataset, earliest_acq: Optional[_dt.datetime], series_start: Optional[_dt.datetime],
                    label: str) -> _dt.datetime:
    """QIBA/IBSI order: SeriesDate/Time unless later than the earliest acquisition; the GE private scan date-time;
    the start back-computed from acquisition and frame reference times; the earliest acquisition date-time."""
    series_dt = _combine(ds.get("SeriesDate"), ds.get("SeriesTime"))
    if series_dt is not None and (earliest_acq is None or series_dt <= earliest_acq):
        return series_dt
    ge = _parse_dt(_raw_value(ds, GE_DECAY_DATETIME))
    if ge is not None:
        return ge
    if series_start is not None and (earliest_acq is None or series_start <= earliest_acq):
        return series_start  # a start after the earliest acquisition is impossible: never used
    if earliest_acq is not None:
        return earliest_acq
    raise PatientError(label, "SeriesDate/SeriesTime (0008,0021)/(0008,0031) and AcquisitionDate/AcquisitionTime "
                              "(0008,0022)/(0008,0032) are missing; SUV needs the scan time. Re-export with times")


def _injection_time(ds: pydicom.Dataset, rp: pydicom.Dataset, ov: SuvOverrides, reference: _dt.datetime,
                    label: str) -> _dt.datetime:
    if ov.injection_datetime is not None:
        return ov.injection_datetime
    full = _parse_dt(rp.get("RadiopharmaceuticalStartDateTime"))
    if full is not None:
        return full
    t = _parse_time(rp.get("RadiopharmaceuticalStartTime"))
    if t is None:
        raise PatientError(label, "RadiopharmaceuticalStartDateTime (0018,1078) and RadiopharmaceuticalStartTime "
                                  "(0018,1072) are missing; SUV needs the injection time. Add injection_datetime to "
                                  "the --overrides CSV")
    day = _parse_date(ds.get("SeriesDate")) or _parse_date(ds.get("AcquisitionDate")) or reference.date()
    injection = _dt.datetime.combine(day, t)
    if injection > reference:  # injected before midnight, scanned after it
        injection -= _dt.timedelta(days=1)
    return injection


def _dose_bq(rp: pydicom.Dataset, ov: SuvOverrides, label: str) -> float:
    if ov.dose_bq is not None:
        return float(ov.dose_bq)
    dose = _float_or_none(rp.get("RadionuclideTotalDose"))
    if dose is None or dose <= 0:
        raise PatientError(label, "RadionuclideTotalDose (0018,1074) is missing or zero; SUV needs the injected "
                                  "activity. Add dose_bq for this patient to the --overrides CSV")
    return dose * 1e6 if dose < MBQ_THRESHOLD else dose


def _half_life(rp: pydicom.Dataset, label: str) -> float:
    t = _float_or_none(rp.get("RadionuclideHalfLife"))
    if t is None or t <= 0:
        raise PatientError(label, "RadionuclideHalfLife (0018,1075) is missing or zero; SUV needs it for decay "
                                  "correction. Re-export the PET with the radiopharmaceutical information")
    return t


def suv_factor(ds: pydicom.Dataset, overrides: Optional[SuvOverrides] = None, label: str = "", *,
               earliest_acquisition: Optional[_dt.datetime] = None,
               series_start: Optional[_dt.datetime] = None) -> float:
    """Factor that turns one PET slice's rescaled pixel values (after RescaleSlope/Intercept) into SUVbw.

    ``ds`` is the slice header. ``earliest_acquisition`` is the earliest acquisition date-time of the whole series
    (see :func:`series_earliest_acquisition`) and ``series_start`` the start back-computed from it
    (:func:`series_acquisition_start`); :func:`read_pet_suv` passes both; by default the slice's own.
    Raises :class:`PatientError` (naming ``label`` and the DICOM tag) for ungated, unsupported or incomplete headers.
    """
    if not isinstance(ds, pydicom.Dataset):
        raise TypeError(f"ds must be a pydicom Dataset, got {type(ds).__name__}")
    ov = overrides if overrides is not None else SuvOverrides()
    if not isinstance(ov, SuvOverrides):
        raise TypeError(f"overrides must be SuvOverrides or None, got {type(overrides).__name__}")
    modality = str(ds.get("Modality", "PT")).upper()
    if modality != "PT":
        raise PatientError(label, f"SUV needs a PET slice, got Modality {modality} (0008,0060)")
    corrected = _upper_list(ds.get("CorrectedImage"))
    decay_mode = str(ds.get("DecayCorrection", "") or "").strip().upper()
    if "ATTN" not in corrected:
        raise PatientError(label, "CorrectedImage (0028,0051) lacks ATTN: the PET is not attenuation corrected and "
                                  "has no meaningful SUV. Export the attenuation-corrected series")
    if "DECY" not in corrected and decay_mode != "NONE":
        raise PatientError(label, f"CorrectedImage (0028,0051) lacks DECY but DecayCorrection (0054,1102) is "
                                  f"{decay_mode or 'missing'}; the headers contradict each other. Check the export")
    stype = _upper_list(ds.get("SeriesType"))
    if len(stype) >= 2 and stype[1] != "IMAGE":
        raise PatientError(label, f"SeriesType (0054,1000) is {'/'.join(stype)}, not an IMAGE series (projection); "
                                  f"export the reconstructed image series")
    units = str(ds.get("Units", "") or "").strip().upper()
    activity_scale = 1.0
    if units in ("GML", "CM2ML"):
        suv_type = str(ds.get("SUVType", "") or "").strip().upper() or ("BSA" if units == "CM2ML" else "BW")
        if suv_type == "BW":
            if units != "GML":
                raise PatientError(label, "Units CM2ML (0054,1001) with SUVType BW (0054,1006) is inconsistent")
            return 1.0
        w = _weight_kg(ds, ov, label)
        h, sex = _height_sex(ds, ov, label, suv_type)
        if suv_type in ("LBM", "LBMJAMES128", "LBMJANMA"):
            return w / lean_body_mass(w, h, sex, suv_type)
        if suv_type == "IBW":
            return w / ideal_body_weight(h, sex)
        if suv_type == "BSA":
            return (w * 1000.0) / (body_surface_area_dubois(w, h) * 1e4)  # g / cm^2
        raise PatientError(label, f"SUVType (0054,1006) {suv_type} is not supported (BW, LBM, LBMJAMES128, "
                                  "LBMJANMA, BSA, IBW)")
    if units == "CNTS":
        suv_scale = _float_or_none(_raw_value(ds, PHILIPS_SUV_SCALE))
        if suv_scale is not None and suv_scale != 0:
            return suv_scale
        act = _float_or_none(_raw_value(ds, PHILIPS_ACTIVITY_SCALE))
        if act is None or act == 0:
            raise PatientError(label, "Units CNTS (0054,1001) without the Philips SUV scale factor (7053,1000) or "
                                      "activity concentration scale factor (7053,1009); export the PET in BQML")
        activity_scale = act
    elif units != "BQML":
        raise PatientError(label, f"Units (0054,1001) {units or 'missing'} cannot be converted to SUV (supported: "
                                  f"BQML, CNTS with Philips factors, GML, CM2ML)")
    weight_g = _weight_kg(ds, ov, label) * 1000.0
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    rp = seq[0] if seq else pydicom.Dataset()  # missing values are reported tag by tag below
    dose = _dose_bq(rp, ov, label)
    if decay_mode == "ADMIN":
        return activity_scale * weight_g / dose
    if decay_mode not in ("START", "NONE"):
        raise PatientError(label, f"DecayCorrection (0054,1102) {decay_mode or 'missing'} is not supported "
                                  f"(START, ADMIN, NONE)")
    half_life = _half_life(rp, label)
    if earliest_acquisition is None:
        earliest_acquisition = series_earliest_acquisition([ds])
    if decay_mode == "START":
        if series_start is None:  # every slice's frame reference time points back to the same series start
            series_start = acquisition_start(ds, half_life)
        t_ref = _reference_time(ds, earliest_acquisition, series_start, label)
        t_inj = _injection_time(ds, rp, ov, t_ref, label)
        elapsed = (t_ref - t_inj).total_seconds()
        if elapsed < 0:
            raise PatientError(label, f"injection time is {-elapsed:.0f} s after the scan reference time; check "
                                      f"RadiopharmaceuticalStartDateTime (0018,1078) and SeriesTime (0008,0031)")
        decayed = dose * 2.0 ** (-elapsed / half_life)
        return activity_scale * weight_g / decayed
    # NONE: the slice is not decay corrected; correct to its own acquisition start, averaged over the frame
    t_acq = _combine(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime"))
    if t_acq is None:
        raise PatientError(label, "DecayCorrection NONE needs AcquisitionDate/AcquisitionTime (0008,0022)/(0008,0032)"
                                  " per slice; they are missing. Re-export the PET")
    t_inj = _injection_time(ds, rp, ov, t_acq, label)
    elapsed = (t_acq - t_inj).total_seconds()
    if elapsed < 0:
        raise PatientError(label, "injection time is after the slice's AcquisitionTime (0008,0032); check the times")
    lam = math.log(2.0) / half_life
    duration_ms = _float_or_none(ds.get("ActualFrameDuration"))
    frame = (1.0 - math.exp(-lam * duration_ms / 1000.0)) / (lam * duration_ms / 1000.0) if duration_ms else 1.0
    decayed = dose * 2.0 ** (-elapsed / half_life) * frame
    return activity_scale * weight_g / decayed


def _series_start_of(headers: Sequence[pydicom.Dataset]) -> Optional[_dt.datetime]:
    """:func:`series_acquisition_start` with the half-life of the first slice (None without one)."""
    seq = headers[0].get("RadiopharmaceuticalInformationSequence") if headers else None
    half_life = _float_or_none(seq[0].get("RadionuclideHalfLife")) if seq else None
    return series_acquisition_start(headers, half_life) if half_life and half_life > 0 else None


#: What :func:`suv_factor` reads from a slice header besides the radiopharmaceutical item (:data:`_RP_KEYWORDS`),
#: by keyword or (private) tag number, and what it reads per slice only for DecayCorrection NONE or a series
#: without a back-computed start (:data:`_PER_SLICE_TIMES`).
_FACTOR_ELEMENTS: Tuple[Any, ...] = (
    "SpecificCharacterSet", "Modality", "CorrectedImage", "DecayCorrection", "SeriesType", "Units", "SUVType",
    "PatientWeight", "PatientSize", "PatientSex", "SeriesDate", "SeriesTime", "AcquisitionDate",
    PHILIPS_SUV_SCALE, PHILIPS_ACTIVITY_SCALE, GE_DECAY_DATETIME)
_PER_SLICE_TIMES = ("AcquisitionTime", "FrameReferenceTime", "ActualFrameDuration")
_RP_KEYWORDS = ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartDateTime",
                "RadiopharmaceuticalStartTime")


def _element_key(ds: Any, tag: Any) -> Any:
    """The stored form of one element (its raw bytes when pydicom has not decoded it yet): equal keys mean equal
    values for :func:`suv_factor`."""
    elem = ds.get_item(tag)
    if elem is None:
        return None
    value = elem.value
    return (elem.VR, value if isinstance(value, (bytes, str, type(None))) else repr(value))


def _factor_key(ds: Any, per_slice_times: bool) -> Tuple[Any, ...]:
    """Everything :func:`suv_factor` reads from ``ds`` (with the series' earliest acquisition and start fixed):
    slices with equal keys have equal factors."""
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    rp = seq[0] if seq else None
    times = per_slice_times or str(ds.get("DecayCorrection", "") or "").strip().upper() not in ("START", "ADMIN")
    return (tuple(_element_key(ds, t) for t in _FACTOR_ELEMENTS),
            tuple(_element_key(ds, t) for t in _PER_SLICE_TIMES) if times else (),
            tuple(_element_key(rp, t) for t in _RP_KEYWORDS) if rp is not None else None)


def series_suv_factors(headers: Sequence[pydicom.Dataset], overrides: Optional[SuvOverrides] = None,
                       label: str = "") -> np.ndarray:
    """:func:`suv_factor` of every slice (float64, in the order of ``headers``), with the series' earliest
    acquisition and back-computed start.

    The factor is computed once per distinct set of the values it depends on (:func:`_factor_key`): in a usual
    series every slice shares them (one computation instead of one per slice, ~0.4-3 ms each); a slice whose
    values differ (DecayCorrection NONE: its own acquisition time) gets its own. The result, and the first error
    raised, are the same as computing every slice.
    """
    earliest = series_earliest_acquisition(headers)
    start = _series_start_of(headers)
    known: dict = {}
    factors = np.empty(len(headers), dtype=np.float64)
    for n, h in enumerate(headers):
        key = _factor_key(h, per_slice_times=start is None)
        if key not in known:
            known[key] = suv_factor(h, overrides, label, earliest_acquisition=earliest, series_start=start)
        factors[n] = known[key]
    return factors


def read_pet_suv(files: Sequence[PathLike], overrides: Optional[SuvOverrides] = None, label: str = "") -> sitk.Image:
    """Read a PET series as a float32 SUVbw volume (slices sorted, per-slice rescale and per-slice SUV factor).

    Raises :class:`PatientError` for geometry problems (see :mod:`.read`) and SUV header problems (see
    :func:`suv_factor`), always naming ``label`` and the tag.
    """
    return read_pet_suv_with_headers(files, overrides, label)[0]


def read_pet_suv_with_headers(files: Sequence[PathLike], overrides: Optional[SuvOverrides] = None, label: str = ""
                              ) -> Tuple[sitk.Image, List[Path], List[pydicom.Dataset]]:
    """:func:`read_pet_suv` that also returns the files and their full headers (no pixels) in slice order, so that
    callers (the SEG reader, the DICOM writers) need not parse the same headers again."""
    from .read import read_series_with_headers

    image, sorted_files, headers = read_series_with_headers(files, label)
    units = {str(h.get("Units", "")).upper() for h in headers}
    if len(units) > 1:
        raise PatientError(label, f"slices disagree on Units (0054,1001): {sorted(units)}; export one series")
    factors = series_suv_factors(headers, overrides, label)
    if not np.all(np.isfinite(factors)) or np.any(factors <= 0):
        raise PatientError(label, "SUV factor is not a positive finite number; check weight, dose and times")
    arr = sitk.GetArrayFromImage(image)  # z, y, x
    arr *= factors.astype(np.float32)[:, None, None]
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out, sorted_files, headers
