"""SUVbw: the IBSI/QIBA reference objects, a real GE patient, and hand-built headers for every branch."""
from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from clips_nnunet.dataset_conversion.masks import mask_to_grid, rasterise_rtstruct
from clips_nnunet.dataset_conversion.overrides import SuvOverrides, load_overrides
from clips_nnunet.dataset_conversion.read import read_ct
from clips_nnunet.dataset_conversion.suv import (lean_body_mass_james, read_pet_suv, suv_factor)
from clips_nnunet.errors import ClipsError, PatientError
from tests.nnunet_helpers import SHARED_TESTDATA

DRO_ROOT = SHARED_TESTDATA / "suv_dro"
STS = SHARED_TESTDATA / "tcia_sts_001"
DROS = sorted(p.name for p in DRO_ROOT.glob("DRO_*") if p.is_dir())


# ------------------------------------------------------------------------------------------- reference objects
def test_all_ten_dros_present():
    assert len(DROS) == 10


@pytest.mark.parametrize("name", DROS)
def test_dro_suv_statistics_in_roi(name):
    """Every DRO: min / median / max SUVbw inside the RTSTRUCT ROI (our rasteriser) within 1% of 0.2 / 1 / 4."""
    d = DRO_ROOT / name
    suv = read_pet_suv(sorted((d / "PT").glob("*.dcm"), reverse=True), label=name)  # file order must not matter
    assert suv.GetPixelID() == sitk.sitkFloat32
    roi = rasterise_rtstruct(next((d / "RS").glob("*.dcm")), suv, label=name)
    values = sitk.GetArrayFromImage(suv)[roi > 0]
    assert values.size > 1000
    for got, want in zip((values.min(), np.median(values), values.max()), (0.20, 1.00, 4.00)):
        assert abs(got - want) <= 0.01 * want, (name, got, want)
    # and inside the NIfTI mask shipped with the object
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "mask" / "DRO_mask.nii.gz"))) > 0
    v2 = sitk.GetArrayFromImage(suv)[mask]
    assert abs(np.median(v2) - 1.0) <= 0.01 and abs(v2.max() - 4.0) <= 0.04


# --------------------------------------------------------------------------------------------- real GE patient
@pytest.fixture(scope="module")
def ge_pet():
    return read_pet_suv(sorted((STS / "STS_001_PT_raw_BQML").glob("*.dcm")), label="case_ge")


@pytest.fixture(scope="module")
def ge_mass_on_pet(ge_pet):
    return rasterise_rtstruct(STS / "STS_001_RTSTRUCT_on_PT_raw" / "1-1.dcm", ge_pet, roi_pattern="^GTV_Mass$")


def test_ge_patient_suv_in_gtv_mass(ge_pet, ge_mass_on_pet):
    values = sitk.GetArrayFromImage(ge_pet)[ge_mass_on_pet > 0]
    assert 7.9 <= values.max() <= 8.0
    assert 0.15 <= values.min() <= 0.20
    assert ge_pet.GetSize() == (128, 128, 267)


def test_ge_rtstruct_on_ct_brought_to_pet_grid_overlaps(ge_pet, ge_mass_on_pet):
    ct = read_ct(sorted((STS / "STS_001_CT_cropped").glob("*.dcm")), label="case_ge")
    on_ct = rasterise_rtstruct(STS / "STS_001_RTSTRUCT_on_CT" / "RS.dcm", ct, roi_pattern="GTV_Mass")
    assert on_ct.shape == (59, 202, 198) and on_ct.sum() > 10000
    on_pet = mask_to_grid(on_ct, ct, ge_pet)
    inter = np.logical_and(on_pet > 0, ge_mass_on_pet > 0).sum()
    dice = 2 * inter / (on_pet.sum() + ge_mass_on_pet.sum())
    assert dice > 0.9, dice


# ----------------------------------------------------------------------------------------- hand-built headers
HALF_LIFE = 6586.2
DOSE = 370e6


def pet_header(**changes) -> Dataset:
    ds = Dataset()
    ds.Modality = "PT"
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT"]
    ds.SeriesType = ["STATIC", "IMAGE"]
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.PatientWeight = "70"
    ds.PatientSize = "1.75"
    ds.PatientSex = "M"
    ds.SeriesDate = ds.AcquisitionDate = "20250101"
    ds.SeriesTime = ds.AcquisitionTime = "110000"
    ds.ActualFrameDuration = 120000
    rp = Dataset()
    rp.RadiopharmaceuticalStartDateTime = "20250101100000"
    rp.RadiopharmaceuticalStartTime = "100000"
    rp.RadionuclideTotalDose = str(DOSE)
    rp.RadionuclideHalfLife = str(HALF_LIFE)
    ds.RadiopharmaceuticalInformationSequence = [rp]
    for k, v in changes.items():
        if k.startswith("rp_"):
            if v is None:
                delattr(rp, k[3:])
            else:
                setattr(rp, k[3:], v)
        elif v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


def expected(weight_kg=70.0, elapsed_s=3600.0, dose=DOSE):
    return weight_kg * 1000.0 / (dose * 2 ** (-elapsed_s / HALF_LIFE))


def test_start_decay_one_hour():
    assert suv_factor(pet_header()) == pytest.approx(expected(), rel=1e-9)


def test_weight_in_grams_and_dose_in_mbq():
    assert suv_factor(pet_header(PatientWeight="70000")) == pytest.approx(expected(), rel=1e-9)
    assert suv_factor(pet_header(rp_RadionuclideTotalDose="370")) == pytest.approx(expected(), rel=1e-9)


def test_missing_weight_names_patient_and_tag_unless_overridden():
    with pytest.raises(PatientError) as err:
        suv_factor(pet_header(PatientWeight=None), label="case_0007")
    assert "case_0007" in str(err.value) and "(0010,1030)" in str(err.value) and "overrides" in str(err.value)
    assert suv_factor(pet_header(PatientWeight=None), SuvOverrides(weight_kg=80.0)) == pytest.approx(
        expected(weight_kg=80.0), rel=1e-9)


def test_missing_dose_and_injection_time_name_their_tags():
    with pytest.raises(PatientError, match=r"\(0018,1074\)"):
        suv_factor(pet_header(rp_RadionuclideTotalDose=None))
    with pytest.raises(PatientError, match=r"\(0018,1072\)"):
        suv_factor(pet_header(rp_RadiopharmaceuticalStartDateTime=None, rp_RadiopharmaceuticalStartTime=None))
    ov = SuvOverrides(injection_datetime=dt.datetime(2025, 1, 1, 10, 30))
    assert suv_factor(pet_header(rp_RadiopharmaceuticalStartDateTime=None, rp_RadiopharmaceuticalStartTime=None),
                      ov) == pytest.approx(expected(elapsed_s=1800.0), rel=1e-9)


def test_injection_time_only_across_midnight():
    ds = pet_header(rp_RadiopharmaceuticalStartDateTime=None, rp_RadiopharmaceuticalStartTime="233000",
                    SeriesDate="20250102", AcquisitionDate="20250102", SeriesTime="003000", AcquisitionTime="003000")
    assert suv_factor(ds) == pytest.approx(expected(elapsed_s=3600.0), rel=1e-9)


def test_injection_datetime_preferred_over_time():
    ds = pet_header(rp_RadiopharmaceuticalStartTime="103000")  # the DateTime (10:00) wins
    assert suv_factor(ds) == pytest.approx(expected(), rel=1e-9)


def test_reference_time_when_series_time_after_acquisition():
    # series time reset by post-processing (12:00 > acquisition 11:00): GE private decay time wins, else acquisition
    ds = pet_header(SeriesTime="120000")
    assert suv_factor(ds) == pytest.approx(expected(elapsed_s=3600.0), rel=1e-9)
    ds.add_new((0x0009, 0x100D), "UN", b"20250101103000.00 ")  # no private creator: read raw
    assert suv_factor(ds) == pytest.approx(expected(elapsed_s=1800.0), rel=1e-9)


def test_decay_admin_and_none():
    assert suv_factor(pet_header(DecayCorrection="ADMIN")) == pytest.approx(70000 / DOSE, rel=1e-9)
    lam = math.log(2) / HALF_LIFE
    frame = (1 - math.exp(-lam * 120)) / (lam * 120)
    ds = pet_header(DecayCorrection="NONE", CorrectedImage=["ATTN"], AcquisitionTime="113000")
    assert suv_factor(ds) == pytest.approx(70000 / (DOSE * 2 ** (-5400 / HALF_LIFE) * frame), rel=1e-9)


def test_philips_cnts_private_tags_without_creator():
    ds = pet_header(Units="CNTS")
    ds.add_new((0x7053, 0x1000), "UN", b"0.000123")
    assert suv_factor(ds) == pytest.approx(0.000123, rel=1e-12)
    ds2 = pet_header(Units="CNTS")
    ds2.add_new((0x7053, 0x1009), "DS", "2.5")  # activity concentration scale only: Bq/ml, then SUV
    assert suv_factor(ds2) == pytest.approx(2.5 * expected(), rel=1e-9)
    ds3 = pet_header(Units="CNTS")
    ds3.add_new((0x7053, 0x1000), "DS", "0")  # zero SUV factor -> falls back to the activity factor
    ds3.add_new((0x7053, 0x1009), "DS", "1.0")
    assert suv_factor(ds3) == pytest.approx(expected(), rel=1e-9)
    with pytest.raises(PatientError, match=r"7053,1000"):
        suv_factor(pet_header(Units="CNTS"))


def test_gml_types_converted_to_body_weight():
    """W 70 kg, H 175 cm, (W/H)^2 = 0.16, BMI 22.857 (hand-computed values of the IBSI manual's formulas)."""
    assert suv_factor(pet_header(Units="GML", SUVType="BW")) == 1.0
    assert lean_body_mass_james(70.0, 1.75, "M") == pytest.approx(77.0 - 128 * 0.16)  # 56.52
    # LBM (Morgan): male 1.10 W - 120 (W/H)^2 = 57.8; LBMJAMES128: 56.52; female (both) 1.07 W - 148 (W/H)^2 = 51.22
    assert suv_factor(pet_header(Units="GML", SUVType="LBM")) == pytest.approx(70.0 / 57.8, rel=1e-12)
    assert suv_factor(pet_header(Units="GML", SUVType="LBMJAMES128")) == pytest.approx(70.0 / 56.52, rel=1e-12)
    assert suv_factor(pet_header(Units="GML", SUVType="LBM", PatientSex="F")) == pytest.approx(70.0 / 51.22,
                                                                                              rel=1e-12)
    # LBMJANMA (Janmahasatian): male 9270 W / (6680 + 216 BMI)
    bmi = 70.0 / 1.75 ** 2
    assert suv_factor(pet_header(Units="GML", SUVType="LBMJANMA")) == pytest.approx(
        70.0 / (9270 * 70.0 / (6680 + 216 * bmi)), rel=1e-12)
    # IBW: male 48.0 + 1.06 * 23 = 72.38, female 45.5 + 0.91 * 23 = 66.43
    assert suv_factor(pet_header(Units="GML", SUVType="IBW")) == pytest.approx(70.0 / 72.38, rel=1e-12)
    assert suv_factor(pet_header(Units="GML", SUVType="IBW", PatientSex="F")) == pytest.approx(70.0 / 66.43,
                                                                                              rel=1e-12)
    with pytest.raises(PatientError, match=r"\(0010,0040\) M, F or O, got none"):
        suv_factor(pet_header(Units="GML", SUVType="IBW", PatientSex=""))


def test_patient_sex_other_uses_the_mean_of_the_male_and_female_values():
    """IBSI SUV manual: for PatientSex O, LBM and IBW are the mean of the sex-specific values (DRO_2_2: GML, IBW, O).
    IBW (72.38 + 66.43) / 2 = 69.405 kg; LBM (Morgan) (57.8 + 51.22) / 2 = 54.51 kg."""
    assert suv_factor(pet_header(Units="GML", SUVType="IBW", PatientSex="O")) == pytest.approx(70.0 / 69.405,
                                                                                              rel=1e-12)
    assert suv_factor(pet_header(Units="GML", SUVType="LBM", PatientSex="O")) == pytest.approx(70.0 / 54.51,
                                                                                              rel=1e-12)
    # the mean of the masses, not of the factors (70/72.38 + 70/66.43) / 2 = 1.01043, 0.2 % away
    assert abs(suv_factor(pet_header(Units="GML", SUVType="IBW", PatientSex="O")) - 1.010429) > 1e-3
    assert suv_factor(pet_header(Units="GML", SUVType="IBW", PatientSex=None),
                      SuvOverrides(sex="O")) == pytest.approx(70.0 / 69.405, rel=1e-12)


def test_series_start_back_computed_from_acquisition_and_frame_reference_time():
    """DecayCorrection START, SeriesTime 11:30 after the acquisition (11:02:30; post-processed series), no GE tag:
    t_ref = t_acq + T_ave - FrameReferenceTime (IBSI manual; DICOM PS3.3 C.8.9.4.1.5), as in DRO_3_2.

    By hand: l = ln 2 / 6586.2 s, T = 603 s, l T = 0.0634612; T_ave = ln(l T / (1 - e^(-l T))) / l
    = T / 2 - l T^2 / 24 + O(l^3 T^4) = 301.5 - 1.5945 = 299.9055 s; FrameReferenceTime 450 s, so
    t_ref = 11:02:30 + 299.9055 - 450 s = 10:59:59.9055, 3599.9055 s after the injection at 10:00.
    """
    from clips_nnunet.dataset_conversion.suv import acquisition_start, series_acquisition_start
    ds = pet_header(SeriesTime="113000", AcquisitionTime="110230", FrameReferenceTime=450000.0,
                    ActualFrameDuration=603000)
    start = acquisition_start(ds, HALF_LIFE)
    assert abs((start - dt.datetime(2025, 1, 1, 10, 59, 59, 905500)).total_seconds()) < 0.002
    assert suv_factor(ds) == pytest.approx(expected(elapsed_s=3599.9055), rel=1e-7)
    # the earliest acquisition time alone (3750 s) would be 2^(150/6586.2) = 1.6 % too high
    assert suv_factor(ds) * 2 ** (150.0945 / HALF_LIFE) == pytest.approx(expected(elapsed_s=3750.0), rel=1e-7)
    # a later bed (acquired 10 min later, its frame reference 10 min later) points back to the same start
    later = pet_header(SeriesTime="113000", AcquisitionTime="111230", FrameReferenceTime=1050000.0,
                       ActualFrameDuration=603000)
    assert abs((acquisition_start(later, HALF_LIFE) - start).total_seconds()) < 1e-3
    assert series_acquisition_start([later, ds], HALF_LIFE) == start
    assert suv_factor(later) == pytest.approx(suv_factor(ds), rel=1e-9)
    # precedence: a GE private scan date-time still wins; without FrameReferenceTime the earliest acquisition is used
    ds.add_new((0x0009, 0x100D), "UN", b"20250101103000.00 ")
    assert suv_factor(ds) == pytest.approx(expected(elapsed_s=1800.0), rel=1e-9)
    no_frame = pet_header(SeriesTime="113000", AcquisitionTime="110230")
    assert suv_factor(no_frame) == pytest.approx(expected(elapsed_s=3750.0), rel=1e-9)
    # and when the series time is plausible (not after the acquisition) it is used as it is
    assert suv_factor(pet_header(AcquisitionTime="110230", FrameReferenceTime=450000.0,
                                 ActualFrameDuration=603000)) == pytest.approx(expected(elapsed_s=3600.0), rel=1e-9)


def test_gates_reject_nac_projection_and_unknown_units():
    with pytest.raises(PatientError, match="ATTN"):
        suv_factor(pet_header(CorrectedImage=["DECY"]))
    with pytest.raises(PatientError, match="REPROJECTION"):
        suv_factor(pet_header(SeriesType=["STATIC", "REPROJECTION"]))
    with pytest.raises(PatientError, match=r"\(0054,1001\)"):
        suv_factor(pet_header(Units="PROPCPS"))
    with pytest.raises(PatientError, match="after the scan"):
        suv_factor(pet_header(rp_RadiopharmaceuticalStartDateTime="20250101120000"))


# ----------------------------------------------------------------------------------------------------- overrides
def test_load_overrides(tmp_path):
    p = tmp_path / "ov.csv"
    p.write_text("PatientID,weight_kg,dose_mbq,injection_datetime,sex\nA1,71.5,350,2025-01-31T09:15:00,f\nB2,,,,\n")
    ov = load_overrides(p)
    assert ov["A1"] == SuvOverrides(weight_kg=71.5, dose_bq=350e6,
                                    injection_datetime=dt.datetime(2025, 1, 31, 9, 15), sex="F")
    assert ov["B2"] == SuvOverrides()
    p.write_text("PatientID,weight_kg\nA1,70\nA1,71\n")
    with pytest.raises(ClipsError, match="row 3"):
        load_overrides(p)
    p.write_text("PatientID,weight\nA1,70\n")
    with pytest.raises(ClipsError, match="unknown column"):
        load_overrides(p)
    p.write_text("PatientID,weight_kg\nA1,seventy\n")
    with pytest.raises(ClipsError, match="row 2"):
        load_overrides(p)
    p.write_text("PatientID,weight_kg\nA1,7000\n")  # implausible
    with pytest.raises(ClipsError, match="row 2.*weight_kg"):
        load_overrides(p)


def test_invalid_frame_times_never_put_the_series_start_after_the_acquisition():
    """Issue 24 item 6. SeriesTime 12:00 after the acquisition (11:00; post-processed series), no GE tag,
    ActualFrameDuration 180 s and FrameReferenceTime 0. Back-computing would give t_acq + T_ave - 0, a series start
    AFTER the slice's own acquisition, which is impossible; QIBA back-computes only with valid frame times.

    By hand: l = ln 2 / 6586.2 s = 1.05242e-4 /s, T = 180 s, l T = 0.0189436; T_ave = T / 2 - l T^2 / 24 + O(l^3 T^4)
    = 90 - 0.14208 = 89.8579 s. The old start 11:01:29.858 made the decay 3689.858 s and the SUV
    2^(89.858 / 6586.2) - 1 = 0.950 % too high. Correct: the earliest acquisition, 3600 s after the injection.
    """
    from clips_nnunet.dataset_conversion.suv import acquisition_start
    ds = pet_header(SeriesTime="120000", FrameReferenceTime=0.0, ActualFrameDuration=180000)
    assert acquisition_start(ds, HALF_LIFE) is None
    assert suv_factor(ds) == pytest.approx(expected(elapsed_s=3600.0), rel=1e-9)
    wrong = expected(elapsed_s=3600.0 + 89.8579)
    assert wrong / expected(elapsed_s=3600.0) - 1 == pytest.approx(0.00950, abs=2e-5)
    # a positive FrameReferenceTime shorter than T_ave (30 s < 89.86 s) would also start after the acquisition
    short = pet_header(SeriesTime="120000", FrameReferenceTime=30000.0, ActualFrameDuration=180000)
    assert acquisition_start(short, HALF_LIFE) is None
    assert suv_factor(short) == pytest.approx(expected(elapsed_s=3600.0), rel=1e-9)
    # and a series start handed in from the series (read_pet_suv) later than the earliest acquisition is not used
    late_start = dt.datetime(2025, 1, 1, 11, 1, 29)
    assert suv_factor(pet_header(SeriesTime="120000"), series_start=late_start,
                      earliest_acquisition=dt.datetime(2025, 1, 1, 11, 0, 0)) == pytest.approx(
        expected(elapsed_s=3600.0), rel=1e-9)


def test_series_factors_equal_one_computation_per_slice(monkeypatch):
    """`series_suv_factors` computes a factor once per distinct set of the values it depends on; the result must
    equal `suv_factor` slice by slice, whether the slices share everything (START), differ by their own
    acquisition time (NONE, per-slice decay), or differ in a value (one slice with another weight)."""
    from clips_nnunet.dataset_conversion.suv import (series_acquisition_start, series_earliest_acquisition,
                                                     series_suv_factors)

    def per_slice(headers):
        earliest = series_earliest_acquisition(headers)
        start = series_acquisition_start(headers, HALF_LIFE)
        return [suv_factor(h, None, "x", earliest_acquisition=earliest, series_start=start) for h in headers]

    times = ["110000", "110200", "110400", "110600"]
    start = [pet_header(AcquisitionTime=t) for t in times]
    none = [pet_header(DecayCorrection="NONE", CorrectedImage=["ATTN"], AcquisitionTime=t) for t in times]
    mixed = [pet_header(AcquisitionTime=t) for t in times]
    mixed[2].PatientWeight = "80"
    for headers in (start, none, mixed):
        got = series_suv_factors(headers, None, "x")
        assert got.tolist() == pytest.approx(per_slice(headers), rel=0, abs=0)
    assert len(set(series_suv_factors(none).tolist())) == 4  # each NONE slice decays to its own time
    assert series_suv_factors(mixed)[2] == pytest.approx(series_suv_factors(start)[2] * 80 / 70, rel=1e-12)
    # the first slice that fails names its problem as before
    broken = [pet_header(), pet_header(PatientWeight=None)]
    with pytest.raises(PatientError, match=r"case_0009: PatientWeight \(0010,1030\)"):
        series_suv_factors(broken, None, "case_0009")
    # a series with a back-computed start (frame reference times): one computation for all its slices
    import clips_nnunet.dataset_conversion.suv as suv
    shared = [pet_header(AcquisitionTime=t, FrameReferenceTime=60000 + 120000 * n) for n, t in enumerate(times)]
    calls = []
    monkeypatch.setattr(suv, "suv_factor", lambda *a, **k: calls.append(1) or suv_factor(*a, **k))
    assert series_suv_factors(shared).tolist() == pytest.approx(per_slice(shared), rel=0, abs=0)
    assert len(calls) == 1
