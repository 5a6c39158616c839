"""``clips-nnunet audit`` on an nnU-Net results folder laid out as nnU-Net writes it: out-of-fold predictions equal
to the clean masks while k reference masks were corrupted -> the corrupted cases are the top k of audit.csv; the
HTML report is valid and self-contained; bad input is one line and exit code 2."""
import base64
import csv
import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from clips_nnunet.cli import main
from clips_nnunet.metrics.lesions import label_components
from clips_nnunet.synthetic.raw import make_synthetic_raw_dataset

DATASET = "Dataset995_AuditT"
TRAINER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def _read(path):
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


def _write_like(array, like, path):
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.CopyInformation(like)
    sitk.WriteImage(img, str(path), True)


@pytest.fixture(scope="module")
def cv_folder(tmp_path_factory):
    """A finished 5-fold cross-validation whose predictions are the clean masks; 3 references corrupted."""
    base = tmp_path_factory.mktemp("audit")
    raw = make_synthetic_raw_dataset(base / "nnUNet_raw", 995, "AuditT", n_train=12, n_test=0, seed=2)
    gt = base / "nnUNet_preprocessed" / DATASET / "gt_segmentations"
    results = base / "nnUNet_results" / DATASET / TRAINER
    shutil.copytree(raw / "labelsTr", gt)
    results.mkdir(parents=True)
    shutil.copy(raw / "dataset.json", results / "dataset.json")
    (results / "plans.json").write_text(json.dumps({"dataset_name": DATASET, "plans_name": "nnUNetPlans"}))
    cases = sorted(p.name[: -len(".nii.gz")] for p in gt.glob("*.nii.gz"))
    for i, case in enumerate(cases):
        val = results / f"fold_{i % 5}" / "validation"
        val.mkdir(parents=True, exist_ok=True)
        shutil.copy(gt / f"{case}.nii.gz", val / f"{case}.nii.gz")  # prediction = clean mask
    corrupted = {}
    multi = next(c for c in cases if label_components(_read(gt / f"{c}.nii.gz")[1])[1] >= 2)
    img, arr = _read(gt / f"{multi}.nii.gz")
    lab, n = label_components(arr)
    smallest = min(range(1, n + 1), key=lambda i: (lab == i).sum())
    arr[lab == smallest] = 0  # the annotator missed a lesion
    _write_like(arr, img, gt / f"{multi}.nii.gz")
    corrupted[multi] = "missed_lesion"
    where = {multi: _physical_centre(img, lab == smallest)}
    others = [c for c in cases if c != multi]
    img, arr = _read(gt / f"{others[0]}.nii.gz")
    free = ~ndimage.binary_dilation(arr > 0, iterations=4)
    z, y, x = np.argwhere(free[2:-5, 8:-8, 8:-8])[0] + (2, 8, 8)
    arr[z:z + 3, y:y + 3, x:x + 3] = 1  # an extra (non-lesion) region
    where[others[0]] = img.TransformContinuousIndexToPhysicalPoint([float(x + 1), float(y + 1), float(z + 1)])
    _write_like(arr, img, gt / f"{others[0]}.nii.gz")
    corrupted[others[0]] = "extra_region"
    img, arr = _read(gt / f"{others[1]}.nii.gz")
    arr = ndimage.binary_dilation(arr > 0, structure=ndimage.generate_binary_structure(3, 1))  # dilated boundary
    _write_like(arr, img, gt / f"{others[1]}.nii.gz")
    corrupted[others[1]] = "boundary"
    return base, raw, results, gt, corrupted, where


def _physical_centre(img, region):
    z, y, x = np.argwhere(region).mean(axis=0)
    return img.TransformContinuousIndexToPhysicalPoint([float(x), float(y), float(z)])


def _csv_rows(out):
    with open(out / "audit.csv", newline="") as f:
        return list(csv.DictReader(f))


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.cards, self.warnings, self.radios = [], [], [], []
        self._in_warning = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "img" and a.get("src"):
            self.srcs.append((self.cards[-1] if self.cards else None, classes, a["src"]))
        if tag == "div" and "card" in classes:
            self.cards.append(a["id"][len("case-"):])
        if tag == "div" and "warning" in classes:
            self._in_warning = True
            self.warnings.append("")
        if tag == "input" and a.get("type") == "radio":
            self.radios.append((self.cards[-1], a["value"]))

    def handle_endtag(self, tag):
        if tag == "div":
            self._in_warning = False

    def handle_data(self, data):
        if self._in_warning:
            self.warnings[-1] += data


@pytest.mark.parametrize("with_pet", [False, True])
def test_corrupted_references_are_the_top_k(cv_folder, tmp_path, monkeypatch, capsys, with_pet):
    base, raw, results, gt, corrupted, where = cv_folder
    monkeypatch.setenv("nnUNet_preprocessed", str(base / "nnUNet_preprocessed"))  # default --gt
    out = tmp_path / "audit"
    argv = ["audit", str(results), "-o", str(out)] + (
        ["--images", str(raw / "imagesTr"), "--metadata", str(raw / "case_metadata.json")] if with_pet else [])
    assert main(argv) == 0
    rows = _csv_rows(out)
    assert len(rows) == 12 and [r["rank"] for r in rows] == [str(i) for i in range(1, 13)]
    k = len(corrupted)
    assert {r["case_id"] for r in rows[:k]} == set(corrupted)
    assert {r["case_id"]: r["error_kind"] for r in rows[:k]} == corrupted
    assert all(float(r["suspicion"]) > 0 for r in rows[:k]) and all(float(r["suspicion"]) == 0 for r in rows[k:])
    assert all(r["error_kind"] == "none" for r in rows[k:])
    data = json.loads((out / "audit.json").read_text())
    assert [c["case_id"] for c in data["cases"]] == [r["case_id"] for r in rows] and data["failed"] == {}
    assert data["inputs"]["pet"] is with_pet
    if with_pet:  # difficulty measures of case_metadata.json come along as meta_* columns
        meta = json.loads((raw / "case_metadata.json").read_text())
        assert all(float(r["meta_planted_difficulty"]) == pytest.approx(meta[r["case_id"]]["planted_difficulty"], abs=1e-3)
                   for r in rows)
    # index.html: one card per case in audit.csv order, every picture an embedded PNG
    page = (out / "index.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert parser.cards == [r["case_id"] for r in rows]
    # a MIP per case; planes through the finding for each suspect case
    assert sorted(c for c, classes, _ in parser.srcs if "mip" in classes) == sorted(r["case_id"] for r in rows)
    assert sorted(c for c, classes, _ in parser.srcs if "planes" in classes) == sorted(corrupted)
    for _, classes, src in parser.srcs:
        assert "zoom" in classes and src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert parser.warnings == []  # good models: no warning
    assert {v for c, v in parser.radios if c == rows[0]["case_id"]} == {"confirmed_error", "false_alarm", "unsure"}
    assert "The reference has no contour on a lesion the models found" in page
    # the finding of the missed lesion and of the added region is where they were planted (patient coordinates)
    spacing = max(sitk.ReadImage(str(gt / f"{rows[0]['case_id']}.nii.gz")).GetSpacing())
    for case, point in where.items():
        row = next(r for r in rows if r["case_id"] == case)
        found = [float(row[f"finding_{a}_mm"]) for a in "xyz"]
        assert np.linalg.norm(np.subtract(found, point)) <= spacing, (case, found, point)
        img = sitk.ReadImage(str(gt / f"{case}.nii.gz"))
        assert int(row["finding_slice"]) == int(round(img.TransformPhysicalPointToContinuousIndex(point)[2])) + 1
    assert all(r["finding_slice"] == "" for r in rows[k:])
    for name in ("index.html", "audit.csv", "audit.json"):  # case ids only: no paths
        assert str(base) not in (out / name).read_text()
    printed = capsys.readouterr().out
    assert "audited 12 cases" in printed and "warning" not in printed
    assert "(missed_lesion: the reference missed a lesion)" in printed and "at PET slice" in printed


def test_one_unreadable_prediction_is_reported_and_the_rest_audited(cv_folder, tmp_path):
    base, raw, results, gt, corrupted, where = cv_folder
    copy = tmp_path / TRAINER
    shutil.copytree(results, copy)
    victim = sorted(copy.glob("fold_0/validation/*.nii.gz"))[0]
    victim.write_bytes(b"not a nifti")
    out = tmp_path / "out"
    assert main(["audit", str(copy), "--gt", str(gt), "-o", str(out), "--no-html"]) == 0
    data = json.loads((out / "audit.json").read_text())
    case = victim.name[: -len(".nii.gz")]
    assert list(data["failed"]) == [case] and "cannot read" in data["failed"][case]
    assert data["n_cases"] == 11 and not (out / "index.html").exists()


def test_a_truncated_prediction_fails_its_case_instead_of_reading_as_zeros(cv_folder, tmp_path):
    """SimpleITK reads a NIfTI cut short as zeros; the audit reads through io_utils.read_image and names the file."""
    base, raw, results, gt, corrupted, where = cv_folder
    copy = tmp_path / TRAINER
    shutil.copytree(results, copy)
    victim = sorted(copy.glob("fold_0/validation/*.nii.gz"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    out = tmp_path / "out"
    assert main(["audit", str(copy), "--gt", str(gt), "-o", str(out), "--no-html"]) == 0
    data = json.loads((out / "audit.json").read_text())
    case = victim.name[: -len(".nii.gz")]
    assert list(data["failed"]) == [case]
    assert "incomplete or damaged" in data["failed"][case] and victim.name in data["failed"][case]


def test_probabilities_from_npz_and_the_loss_history_are_used(cv_folder, tmp_path):
    history = pytest.importorskip("clips_nnunet.trainers.curriculum_history")
    base, raw, results, gt, corrupted, where = cv_folder
    copy = tmp_path / TRAINER
    shutil.copytree(results, copy)
    cases = []
    for pred in sorted(copy.glob("fold_*/validation/*.nii.gz")):
        fg = sitk.GetArrayFromImage(sitk.ReadImage(str(pred))).astype(np.float32)
        np.savez_compressed(pred.with_name(pred.name[: -len(".nii.gz")] + ".npz"),
                            probabilities=np.stack([1 - fg, fg]))
        cases.append(pred.name[: -len(".nii.gz")])
    writer = history.HistoryWriter(str(copy / "fold_0"), cases, "nnUNetTrainerCLTest")
    writer.start(0)
    for epoch in range(6):  # every case learned (estimate falls) except the last, which stays hard
        est = np.full(len(cases), 1.0 / (epoch + 1))
        est[-1] = 1.0
        writer.append(epoch, np.full(len(cases), 1.0 / len(cases)), est, {"active_fraction": 1.0})
    out = tmp_path / "out"
    assert main(["audit", str(copy), "--gt", str(gt), "-o", str(out), "--no-html"]) == 0
    rows = {r["case_id"]: r for r in _csv_rows(out)}
    assert all(r["has_probabilities"] == "1" for r in rows.values())
    assert float(rows[cases[-1]]["loss_late_rank"]) == 1.0
    assert float(rows[cases[-1]]["loss_score"]) == pytest.approx(0.1)
    assert {r["case_id"] for r in sorted(rows.values(), key=lambda r: int(r["rank"]))[:3]} == set(corrupted)


@pytest.mark.parametrize("argv, message", [
    (["audit", "{tmp}/missing", "-o", "{tmp}/o"], "does not exist"),
    (["audit", "{tmp}", "-o", "{tmp}/o"], "fold_X/validation"),
    (["audit", "{results}", "--gt", "{tmp}/nogt", "-o", "{tmp}/o"], "reference folder"),
    (["audit", "{results}", "--gt", "{gt}", "--images", "{tmp}/noimg", "-o", "{tmp}/o"], "--images"),
])
def test_bad_input_is_one_line_and_exit_code_2(cv_folder, tmp_path, capsys, argv, message):
    base, raw, results, gt, corrupted, where = cv_folder
    argv = [a.format(tmp=tmp_path, results=results, gt=gt) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("clips-nnunet audit: error:") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_poor_models_are_warned_about(cv_folder, tmp_path, capsys):
    """Out-of-fold predictions that find nothing (a useless model): every case is hard_case or worse; the page,
    audit.json and the console say the ranking means little."""
    base, raw, results, gt, corrupted, where = cv_folder
    copy = tmp_path / TRAINER
    shutil.copytree(results, copy)
    for pred in copy.glob("fold_*/validation/*.nii.gz"):
        img, arr = _read(pred)
        _write_like(np.zeros_like(arr), img, pred)
    out = tmp_path / "out"
    assert main(["audit", str(copy), "--gt", str(gt), "-o", str(out)]) == 0
    data = json.loads((out / "audit.json").read_text())
    assert len(data["warnings"]) == 1 and "The models are poor" in data["warnings"][0]
    assert "mean Dice against the references is 0.00" in data["warnings"][0]
    parser = _Images()
    parser.feed((out / "index.html").read_text())
    assert len(parser.warnings) == 1 and "The models are poor" in parser.warnings[0]
    assert "warning: The models are poor" in capsys.readouterr().out


def test_decisions_csv_reader(tmp_path):
    from clips_nnunet.audit.decisions import COLUMNS, confirmed_errors, read_decisions
    from clips_nnunet.errors import DatasetError

    path = tmp_path / "audit_decisions.csv"
    path.write_text(",".join(COLUMNS) + "\r\n"
                    'case_0003,confirmed_error,missed_lesion,"node left axilla, ""missed""",1,0.5,1,2,3,4\r\n'
                    "case_0000,false_alarm,extra_region,,2,0.26,,,,\r\n"
                    "case_0001,unsure,boundary,,3,0.25,,,,\r\n"
                    "case_0002,not_reviewed,none,,4,0,,,,\r\n")
    assert confirmed_errors(path) == {"case_0003": "missed_lesion"}
    assert read_decisions(path)[0]["note"] == 'node left axilla, "missed"'
    path.write_text("case_id,decision\r\ncase_1,maybe\r\n")
    with pytest.raises(DatasetError, match="line 2: decision 'maybe'"):
        read_decisions(path)
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_decisions(path)
