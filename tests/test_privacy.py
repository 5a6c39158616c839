"""Privacy of `convert`: no identifier in any output file name, byte or NIfTI header; mapping kept private."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from clips_nnunet.dataset_conversion.convert import convert_cohort
from clips_nnunet.synthetic.dicom_cohort import load_manifest, make_synthetic_cohort
from clips_nnunet.errors import DatasetError
from clips_nnunet.io_utils import read_json

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("privacy")
    cohort = base / "cohort"
    # patient 0's PatientID is "../../SYNPID..."; patient 1 (GE) lacks its weight (its error must not leak either)
    make_synthetic_cohort(cohort, n_patients=3, seed=4, faults=["nac", "missing-weight"], progress=False)
    raw, pre = base / "nnUNet_raw", base / "nnUNet_preprocessed"
    report = convert_cohort(cohort, 777, "Privacy", raw_root=raw, preprocessed_root=pre, progress=False)
    return base, cohort, raw, pre, report, load_manifest(cohort)


def _secrets(manifest):
    out = set()
    for s in manifest["studies"]:
        ident = s["identity"]
        out |= {ident["PatientID"], ident["PatientID"].split("/")[-1], ident["PatientName"],
                ident["PatientBirthDate"], s["study_date"], s["study_uid"], s["ct_series_uid"], s["pet_series_uid"]}
        out |= set(ident["PatientName"].split("^"))
    return {x for x in out if len(x) >= 6}


def _all_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data += gzip.decompress(data)  # NIfTI header (descrip, aux_file, intent_name) and data
    return data


def test_no_identifier_in_any_output_file(converted):
    base, cohort, raw, pre, report, manifest = converted
    secrets = _secrets(manifest)
    assert report.failed and len(report.converted) == 2
    files = [p for root in (raw, pre) for p in root.rglob("*") if p.is_file()]
    assert any(p.name.endswith("_0001.nii.gz") for p in files) and any(p.name == "splits_final.json" for p in files)
    for p in files:
        rel = str(p.relative_to(base))
        data = _all_bytes(p)
        for s in secrets:
            assert s not in rel, (s, rel)
            assert s.encode() not in data, (s, rel)
    for p in (raw / "Dataset777_Privacy" / "imagesTr").iterdir():
        assert re.fullmatch(r"Privacy_\d{4}_000[01]\.nii\.gz", p.name), p.name


def test_mapping_is_private_and_header_values_never_become_paths(converted):
    base, cohort, raw, pre, report, manifest = converted
    private = base / "clips_private" / "Dataset777_Privacy"
    mapping = read_json(private / "case_mapping.json")
    ids = {v["patient"] for v in mapping["cases"].values()}
    assert ids == {s["identity"]["PatientID"] for s in manifest["studies"]}  # the scan above had something to find
    assert raw.resolve() not in private.resolve().parents
    # the "../../" PatientID created nothing outside the output folders
    for p in base.parent.rglob("*"):
        assert "SYNPID" not in p.name, p
    with pytest.raises(DatasetError, match="inside nnUNet_raw"):
        convert_cohort(cohort, 778, "Leaky", raw_root=raw, preprocessed_root=pre, private_dir=raw / "private",
                       progress=False)


def test_case_ids_are_stable_across_runs(converted):
    base, cohort, raw, pre, report, manifest = converted
    private = base / "clips_private" / "Dataset777_Privacy"
    before = read_json(private / "case_mapping.json")
    again = convert_cohort(cohort, 777, "Privacy", raw_root=raw, preprocessed_root=pre, resume=True, progress=False)
    assert read_json(private / "case_mapping.json") == before
    assert sorted(again.cases) == sorted(report.cases)
    assert all(again.cases[c].get("resumed") for c in again.converted)
