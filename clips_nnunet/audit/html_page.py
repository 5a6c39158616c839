"""The audit's review page, ``index.html``: one self-contained file (CSS, JavaScript and pictures inline, nothing
fetched from the network) that a nuclear-medicine physician reviews the ranking with.

Per case, in the ranking's order: the error kind with a plain-language reason that says who missed what
(:data:`REASONS`), the finding's size and place (patient coordinates and PET slice), the coronal MIP and, for a
suspect case, axial, coronal and sagittal planes through the finding (click any picture to enlarge it; Escape or a
click closes it), the reviewer's decision (*confirmed error*, *false alarm*, *unsure*) with a note, and the evidence
numbers folded away. Decisions are kept in the browser's local storage while the page is open in it (a reload
keeps them) and exported with "Export decisions (CSV)" as :data:`clips_nnunet.audit.decisions.EXPORT_NAME` (columns
in :mod:`clips_nnunet.audit.decisions`). A warning at the top says when the models are too poor for the ranking to
mean much. Case ids only: no names, paths or header values.
"""
from __future__ import annotations

import html
import json
import math
from typing import Any, Mapping, Optional, Sequence

from clips_nnunet.audit.decisions import COLUMNS, DECISION_LABELS, EXPORT_NAME
from clips_nnunet.audit.views import FINDING_COLOUR, PREDICTION_COLOUR, REFERENCE_COLOUR

ANNOTATION_KINDS = ("missed_lesion", "extra_region", "boundary")
KIND_TITLES = {"missed_lesion": "missed lesion: the reference missed a lesion",
               "extra_region": "extra region: the reference contours a non-lesion region",
               "boundary": "boundary: the reference's outline looks wrong",
               "hard_case": "hard case: the models struggle, the reference looks plausible",
               "none": "no finding: reference and models agree"}
REASONS = {
    "missed_lesion": "The reference has no contour on a lesion the models found. The annotator may have missed this "
                     "lesion: the out-of-fold models, which never saw this patient's mask, outline it or half see it, "
                     "and the PET shows uptake there.",
    "extra_region": "The reference contours a region the models confidently reject. The annotator may have included "
                    "something that is not lymphoma (physiological uptake such as bladder, kidney, heart, bowel or "
                    "brown fat, or tissue at background SUV, or a contour leaking into an organ whose uptake continues "
                    "beyond it); the models found no lesion there.",
    "boundary": "The reference's outline differs from the models' outline and from the PET. The annotator may have "
                "drawn it too wide or too tight (another threshold convention) or shifted by a slice.",
    "hard_case": "The models disagree with the reference in a way a weak model explains (faint or small lesions they "
                 "miss or add without confidence): probably a hard patient rather than an annotation error.",
    "none": "The reference and the models agree: nothing points at an annotation error.",
}
FINDING_WORDS = {"missed_lesion": "the region the models see outside the reference",
                 "extra_region": "the reference region the models reject",
                 "boundary": "where the reference's outline disagrees most with the models and the PET"}
EVIDENCE_FIELDS = (("suspicion", "suspicion"), ("missed_lesion_score", "missed-lesion score"),
                   ("extra_region_score", "extra-region score"), ("boundary_score", "boundary score"),
                   ("hardness", "hardness"), ("dice", "Dice (reference vs out-of-fold prediction)"),
                   ("ref_ml", "reference ml"), ("pred_ml", "prediction ml"),
                   ("pred_extra_confident_ml", "predicted lesions absent from the reference, ml (weighted)"),
                   ("ref_missed_confident_ml", "reference lesions the models reject, ml (weighted)"),
                   ("unlabelled_hot_supported_ml", "hot spots neither mask holds that the models half see, ml"),
                   ("ref_organ_like", "reference region the models reject whose uptake continues into an organ (0-1)"),
                   ("pred_extra_focal", "focal lesion the models find outside the reference (0-1)"),
                   ("boundary_volume_ratio", "boundary volume ratio reference/prediction"),
                   ("boundary_disagreement", "boundary disagreement (xor/union)"),
                   ("ref_background_fraction", "reference voxels at background SUV"),
                   ("unlabelled_hot_adjacent_ml", "unlabelled hot ml beside the reference"),
                   ("unlabelled_hot_ml", "unlabelled hot ml (physiological included)"),
                   ("loss_late_rank", "late-training loss rank"))

STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;max-width:1400px;color:#222}
.warning{background:#fff3cd;border:2px solid #d39e00;border-radius:6px;padding:.6em 1em;font-weight:600}
.toolbar{position:sticky;top:0;background:#f6f8fa;border:1px solid #ccc;border-radius:6px;padding:.5em;z-index:5}
.card{border:1px solid #bbb;border-radius:8px;padding:.6em 1em;margin:1em 0}
.card.suspect{border-left:6px solid #c0392b}
.card h2{font-size:1.1em;margin:.2em 0}.kind{font-weight:700}.reason{margin:.3em 0}.where{margin:.3em 0;color:#333}
.pics{display:flex;gap:10px;align-items:flex-start;flex-wrap:wrap}
.pics img{cursor:zoom-in;border:1px solid #ddd}.pics img.mip{width:180px}.pics img.planes{width:min(760px,100%)}
fieldset.decision{border:1px solid #999;border-radius:6px;margin:.5em 0}
fieldset.decision label{margin-right:1.2em}fieldset.decision textarea{width:100%;max-width:700px}
table{font-size:12px;border-collapse:collapse}td{padding:1px 6px;border-bottom:1px solid #eee}
#lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);z-index:10;align-items:center;
justify-content:center;cursor:zoom-out}
#lightbox.open{display:flex}#lightbox img{max-width:96vw;max-height:96vh;background:#fff}
"""

SCRIPT = """
(function(){
  var key = 'clips-audit-decisions:' + document.body.dataset.pageId;
  var cards = Array.prototype.slice.call(document.querySelectorAll('.card'));
  function load(){ try { return JSON.parse(localStorage.getItem(key) || '{}'); } catch (e) { return {}; } }
  function save(){
    var all = {};
    cards.forEach(function(c){
      var r = c.querySelector('input[type=radio]:checked');
      var n = c.querySelector('textarea').value;
      if (r || n) { all[c.dataset.case] = {decision: r ? r.value : '', note: n}; }
    });
    try { localStorage.setItem(key, JSON.stringify(all)); } catch (e) {}
    var done = cards.filter(function(c){ return c.querySelector('input[type=radio]:checked'); }).length;
    document.getElementById('reviewed').textContent = done + ' of ' + cards.length + ' cases decided';
  }
  var stored = load();
  cards.forEach(function(c){
    var s = stored[c.dataset.case];
    if (s) {
      var r = c.querySelector('input[type=radio][value="' + s.decision + '"]');
      if (r) { r.checked = true; }
      c.querySelector('textarea').value = s.note || '';
    }
    c.addEventListener('change', save);
    c.addEventListener('input', save);
  });
  save();
  function cell(v){
    v = (v === undefined || v === null) ? '' : String(v);
    return /[",\\r\\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
  }
  window.clipsAuditCsv = function(){
    var lines = [COLUMNS.join(',')];
    cards.forEach(function(c){
      var r = c.querySelector('input[type=radio]:checked');
      var d = c.dataset;
      var row = {case_id: d.case, decision: r ? r.value : 'not_reviewed', error_kind: d.kind,
                 note: c.querySelector('textarea').value, rank: d.rank, suspicion: d.suspicion,
                 finding_x_mm: d.x, finding_y_mm: d.y, finding_z_mm: d.z, finding_slice: d.slice};
      lines.push(COLUMNS.map(function(k){ return cell(row[k]); }).join(','));
    });
    return lines.join('\\r\\n') + '\\r\\n';
  };
  document.getElementById('export').addEventListener('click', function(){
    var text = window.clipsAuditCsv();
    document.getElementById('export-text').value = text;
    var a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([text], {type: 'text/csv'}));
    a.download = EXPORT_NAME;
    document.body.appendChild(a); a.click(); a.remove();
  });
  var box = document.getElementById('lightbox'), big = box.querySelector('img');
  document.querySelectorAll('img.zoom').forEach(function(img){
    img.addEventListener('click', function(){ big.src = img.src; big.alt = img.alt; box.classList.add('open'); });
  });
  function close(){ box.classList.remove('open'); }
  box.addEventListener('click', close);
  document.addEventListener('keydown', function(e){ if (e.key === 'Escape') { close(); } });
})();
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "not defined" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _finding_line(row: Mapping[str, Any]) -> str:
    f = row.get("finding")
    kind = row["error_kind"]
    if kind not in ANNOTATION_KINDS:
        return ""
    if not f:
        return "<p class='where'>Finding: no single region could be located; see the pictures and numbers.</p>"
    x, y, z = f["lps_mm"]
    return (f"<p class='where'><b>Finding</b> ({html.escape(FINDING_WORDS[kind])}, ringed in green): "
            f"{f['volume_ml']:.2f} ml, centre at x {x:.1f}, y {y:.1f}, z {z:.1f} mm (DICOM patient coordinates, "
            f"LPS); <b>PET slice {f['slice']} of {f['n_slices']}</b> (z {f['slice_z_mm']:.1f} mm).</p>")


def _card(rank: int, row: Mapping[str, Any], pictures: Mapping[str, Optional[str]]) -> str:
    case = html.escape(str(row["case_id"]))
    kind = str(row["error_kind"])
    f = row.get("finding") or {}
    x, y, z = f.get("lps_mm", ("", "", ""))
    data = {"case": row["case_id"], "kind": kind, "rank": rank, "suspicion": f"{row['suspicion']:.4g}",
            "x": x, "y": y, "z": z, "slice": f.get("slice", "")}
    attrs = " ".join(f'data-{k}="{html.escape(str(v), quote=True)}"' for k, v in data.items())
    suspect = " suspect" if kind in ANNOTATION_KINDS else ""
    parts = [f'<div class="card{suspect}" id="case-{case}" {attrs}>',
             f"<h2>{rank}. {case} &mdash; <span class='kind'>{html.escape(KIND_TITLES.get(kind, kind))}</span> "
             f"<small>(suspicion {row['suspicion']:.3f})</small></h2>",
             f"<p class='reason'>{html.escape(REASONS.get(kind, ''))}</p>", _finding_line(row), '<div class="pics">']
    if pictures.get("mip"):
        parts.append(f'<img class="zoom mip" alt="coronal SUV MIP of {case}" src="{pictures["mip"]}">')
    if pictures.get("planes"):
        parts.append(f'<img class="zoom planes" alt="axial, coronal and sagittal PET/CT planes through the finding '
                     f'of {case}" src="{pictures["planes"]}">')
    parts.append("</div>")
    name = f"decision-{case}"
    radios = "".join(f'<label><input type="radio" name="{name}" value="{value}"> {label}</label>'
                     for value, label in DECISION_LABELS.items())
    parts.append(f'<fieldset class="decision"><legend>Your decision on {case}</legend>{radios}<br>'
                 f'<textarea rows="2" placeholder="note (e.g. which lesion, what to redraw)" '
                 f'aria-label="note on {case}"></textarea></fieldset>')
    table = "".join(f"<tr><td>{html.escape(label)}</td><td>{html.escape(_fmt(row[key]))}</td></tr>"
                    for key, label in EVIDENCE_FIELDS if key in row)
    parts.append(f"<details><summary>evidence numbers</summary><table>{table}</table></details></div>")
    return "\n".join(parts)


def render_html(rows: Sequence[Mapping[str, Any]], pictures: Mapping[str, Mapping[str, Optional[str]]], title: str,
                notes: Sequence[str], warnings: Sequence[str] = (), page_id: str = "audit") -> str:
    """The review page: a warning per entry of ``warnings``, the notes, the toolbar, one card per row in order.
    ``pictures`` maps a case to ``{"mip": data URI, "planes": data URI or None}``."""
    head = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style></head>",
            f'<body data-page-id="{html.escape(page_id, quote=True)}">', f"<h1>{html.escape(title)}</h1>"]
    head += [f'<div class="warning" role="alert">{html.escape(w)}</div>' for w in warnings]
    head += [f"<p>{html.escape(n)}</p>" for n in notes]
    head.append(
        "<p>Cases sorted by suspicion (most suspect first). Reference outlined <b style='color:"
        f"{REFERENCE_COLOUR}'>solid blue</b>, out-of-fold prediction <b style='color:{PREDICTION_COLOUR}'>dashed "
        f"magenta</b>, the finding ringed in <b style='color:{FINDING_COLOUR}'>green</b>. MIP: black = high uptake. "
        "Planes: PET (colour, SUV scale at the right) over CT (grey); radiological display (the patient's right "
        "on the viewer's left). Click a picture to enlarge it. Mark each case and export your decisions; they are "
        "kept in this browser meanwhile.</p>")
    head.append('<div class="toolbar"><button id="export" type="button">Export decisions (CSV)</button> '
                '<span id="reviewed"></span> <details style="display:inline"><summary>CSV text</summary>'
                '<textarea id="export-text" rows="4" cols="80" readonly></textarea></details></div>')
    cards = [_card(i, row, pictures.get(str(row["case_id"]), {})) for i, row in enumerate(rows, 1)]
    script = f"var COLUMNS = {json.dumps(list(COLUMNS))};\n" + SCRIPT.replace("EXPORT_NAME", json.dumps(EXPORT_NAME))
    tail = ['<div id="lightbox" role="dialog" aria-label="enlarged picture"><img alt=""></div>',
            f"<script>{script}</script></body></html>"]
    return "\n".join(head + cards + tail)
