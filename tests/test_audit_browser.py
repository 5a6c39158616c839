"""The audit page in a real headless Chromium (the distribution's package, `scripts/install_system_packages.sh`), driven
over the DevTools protocol (tests/browser_cdp.py): it loads from disk with no network, every picture is decoded and
shown (naturalWidth > 0), clicking a picture enlarges it, and the decisions made with real mouse clicks and typing
come back in the exported CSV, which the decisions reader turns into the badly-segmented list.

Set CLIPS_AUDIT_SCREENSHOT=PATH to also save a screenshot of the page (docs/audit_page.png was made that way).
"""
import csv
import io
import os
import time
from pathlib import Path

import pytest

from browser_cdp import Browser, find_chromium
from clips_nnunet.cli import main
from test_audit_report import cv_folder  # noqa: F401 - the module-scoped fixture: 12 cases, 3 corrupted references

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (bash scripts/install_system_packages.sh "
                                                         "installs the distribution's chromium package)")


@pytest.fixture(scope="module")
def audit_page(cv_folder, tmp_path_factory):  # noqa: F811
    base, raw, results, gt, corrupted, where = cv_folder
    out = tmp_path_factory.mktemp("audit_page")
    assert main(["audit", str(results), "--gt", str(gt), "--images", str(raw / "imagesTr"), "-o", str(out)]) == 0
    return out, corrupted


def _wait_for_file(folder: Path, name: str, timeout: float = 20.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = folder / name
        if path.is_file() and path.stat().st_size > 0 and not list(folder.glob("*.crdownload")):
            return path
        time.sleep(0.1)
    raise AssertionError(f"{name} was not downloaded into {folder}: {sorted(p.name for p in folder.iterdir())}")


def test_page_loads_shows_images_enlarges_and_exports_decisions(audit_page, tmp_path):
    from clips_nnunet.audit.decisions import COLUMNS, EXPORT_NAME, confirmed_errors, read_decisions

    out, corrupted = audit_page
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with Browser(CHROMIUM) as browser:
        browser.allow_downloads(downloads)
        browser.open((out / "index.html").as_uri())
        assert browser.js("document.title") == "clips-nnunet audit"
        # every picture decoded and shown: a MIP per case, planes for each suspect case
        sizes = browser.js("Array.from(document.querySelectorAll('img.zoom')).map(function(i){"
                           "return [i.className, i.complete, i.naturalWidth, i.getBoundingClientRect().width];})")
        assert len([s for s in sizes if "mip" in s[0]]) == 12
        assert len([s for s in sizes if "planes" in s[0]]) == len(corrupted)
        assert all(complete and natural > 0 and shown > 0 for _, complete, natural, shown in sizes), sizes
        assert browser.js("document.getElementById('reviewed').textContent") == "0 of 12 cases decided"

        # click to enlarge, Escape closes
        cards = browser.js("Array.from(document.querySelectorAll('.card')).map(function(c){return c.dataset.case;})")
        first, second, third = cards[:3]
        browser.click(f"#case-{first} img.planes")
        assert browser.js("document.getElementById('lightbox').classList.contains('open')")
        assert browser.js("document.querySelector('#lightbox img').naturalWidth") > 0
        browser.press_escape()
        assert not browser.js("document.getElementById('lightbox').classList.contains('open')")

        # decisions with real clicks and typing
        browser.click(f"#case-{first} input[value=confirmed_error]")
        browser.click(f"#case-{first} textarea")
        browser.type_text('outline too wide, "dilated" on every slice; redraw')
        browser.click(f"#case-{second} input[value=false_alarm]")
        browser.click(f"#case-{third} input[value=unsure]")
        assert browser.js("document.getElementById('reviewed').textContent") == "3 of 12 cases decided"
        if os.environ.get("CLIPS_AUDIT_SCREENSHOT"):
            browser.js("window.scrollTo(0, 0)")
            browser.screenshot(Path(os.environ["CLIPS_AUDIT_SCREENSHOT"]))
        browser.click("#export")
        csv_path = _wait_for_file(downloads, EXPORT_NAME)
        shown_text = browser.js("document.getElementById('export-text').value")

        # a reload keeps the decisions (local storage)
        browser.open((out / "index.html").as_uri())
        assert browser.js(f"document.querySelector('#case-{first} input[value=confirmed_error]').checked")

    text = csv_path.read_text(encoding="utf-8")
    assert text.replace("\r\n", "\n") == shown_text.replace("\r\n", "\n")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == COLUMNS and [r["case_id"] for r in rows] == cards
    by_case = {r["case_id"]: r for r in rows}
    assert by_case[first]["decision"] == "confirmed_error"
    assert by_case[first]["note"] == 'outline too wide, "dilated" on every slice; redraw'
    assert by_case[second]["decision"] == "false_alarm" and by_case[third]["decision"] == "unsure"
    assert all(r["decision"] == "not_reviewed" for r in rows[3:])
    assert by_case[first]["error_kind"] == corrupted[first] and by_case[first]["finding_slice"].isdigit()
    audit_rows = {r["case_id"]: r for r in csv.DictReader(open(out / "audit.csv", newline=""))}
    assert by_case[first]["finding_slice"] == audit_rows[first]["finding_slice"]
    assert confirmed_errors(csv_path) == {first: corrupted[first]}
    assert len(read_decisions(csv_path)) == 12
