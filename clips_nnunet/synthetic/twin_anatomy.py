"""Anatomy and physiological FDG uptake of the whole-body lymphoma twin (one patient = one :class:`TwinPatient`).

The body is built in *body coordinates*: ``x`` (mm, patient left +), ``y`` (mm, posterior +) and ``s`` (mm below
the vertex, for a 1.75 m patient of normal habitus). :class:`BodyFrame` maps them to patient millimetres: ``s`` is
scaled by height, ``x``/``y`` by habitus (BMI), organ radii by the square root of habitus, and every organ gets its
own size factor and position jitter, so anatomy varies between patients. Structures, in painting order
(:func:`anatomy_shapes`; later covers earlier):

body outline (head, neck, trunk, thighs; arms raised out of the field), subcutaneous fat, muscle wall, visceral fat;
skull, brain (grey-matter cortex and deep nuclei, white matter, cerebellum); tonsils, parotid and submandibular
glands, thyroid; spine (vertebral bodies with marrow, spinous processes), sternum, clavicles, scapulae, pelvis,
femora; paraspinal and psoas muscles; lungs, trachea, oesophagus; heart (myocardium, blood-filled cavities),
aorta, iliac arteries, vena cava; liver, gallbladder, spleen, stomach (wall, content, gas), pancreas; kidneys with
their collecting systems, segmentally filled ureters, bladder; colon and small-bowel loops with segmental uptake;
brown fat (a minority of patients) in the cervical, supraclavicular, axillary, paravertebral and perirenal stations;
benign hot spots of some patients (:func:`_benign`): active neck, paraspinal or psoas muscles (15 %), inflamed
shoulders, hips or sternoclavicular joints (20 %), uterus and ovaries of premenopausal women (40 % of women), testes,
the inflamed wound of the diagnostic node biopsy at a cervical, axillary or inguinal station (50 %); intense bowel
uptake (80 % of segments hot) in patients on metformin (10 %).

Uptake ranges (SUVbw) and HU are in :data:`UPTAKE` and :data:`HU`; docs/synthetic.md gives their sources.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

from clips_nnunet.synthetic.twin_render import Section, Shape

#: Tissue names and their ids in the tissue map (uint8).
TISSUES: Dict[str, int] = {name: i for i, name in enumerate((
    "air", "fat", "muscle", "visceral", "bone", "marrow", "lung", "brain_gm", "brain_wm", "myocardium", "blood",
    "liver", "spleen", "kidney", "collecting", "ureter", "bladder", "bowel", "stomach", "tonsil", "salivary",
    "thyroid", "brown_fat", "airway", "pancreas", "oesophagus", "gallbladder", "soft", "lesion", "necrosis", "uterus", "gonad", "joint", "inflammation"))}

#: Physiological uptake ranges (SUVbw, drawn uniformly per patient unless noted in :func:`draw_patient`).
UPTAKE: Dict[str, Tuple[float, float]] = {
    "fat": (0.2, 0.4), "muscle": (0.5, 0.9), "visceral": (0.4, 0.7), "bone": (0.3, 0.6), "marrow": (1.0, 2.0),
    "marrow_gcsf": (2.5, 6.0), "lung": (0.3, 0.6), "brain_gm": (6.0, 10.0), "blood": (1.4, 2.2),
    "liver": (1.7, 2.8), "spleen_ratio": (0.75, 1.0), "kidney": (2.2, 4.5), "urine": (5.0, 80.0),
    "bowel": (1.0, 3.0), "bowel_hot": (4.0, 12.0), "stomach": (1.4, 3.5), "tonsil": (2.5, 7.0),
    "salivary": (1.5, 3.5), "thyroid": (1.0, 2.0), "thyroid_hot": (4.0, 8.0), "brown_fat": (3.0, 15.0),
    "pancreas": (1.1, 1.8), "oesophagus": (1.3, 2.8), "soft": (0.6, 1.0), "muscle_active": (2.0, 5.0),
    "joint": (2.0, 4.5), "uterus": (2.0, 7.0), "ovary": (2.0, 8.0), "testis": (2.0, 3.5),
    "inflammation": (2.0, 5.0),
}
#: CT numbers (HU) per tissue.
HU: Dict[str, float] = {
    "air": -1000, "fat": -100, "muscle": 45, "visceral": -70, "bone": 700, "marrow": 220, "lung": -840,
    "brain_gm": 38, "brain_wm": 28, "myocardium": 42, "blood": 40, "liver": 58, "spleen": 48, "kidney": 32,
    "collecting": 8, "ureter": 10, "bladder": 6, "bowel": 15, "stomach": 25, "tonsil": 45, "salivary": 35,
    "thyroid": 90, "brown_fat": -65, "airway": -990, "pancreas": 40, "oesophagus": 35, "gallbladder": 10,
    "soft": 30, "lesion": 42, "necrosis": 20, "uterus": 45, "gonad": 35, "joint": 60, "inflammation": 35,
}

# body cross-sections (s, half-width a, half-depth b, centre y), 1.75 m patient of BMI ~24
_PROFILE = np.array([(190, 50, 55, 10), (230, 55, 58, 12), (280, 62, 62, 10), (300, 140, 95, 5),
                     (340, 175, 108, 0), (450, 168, 115, 0), (600, 158, 112, 0), (760, 162, 112, 0),
                     (880, 172, 108, 0), (960, 172, 100, 5)], dtype=float)
S_CROTCH = 975.0
# spine: y of the vertebral body centre along s
_SPINE_Y = np.array([(215, 25), (300, 45), (450, 70), (560, 62), (700, 50), (860, 62)], dtype=float)


@dataclass
class TwinPatient:
    """Per-patient anatomy and physiology parameters of a twin (JSON-safe through :func:`patient_record`)."""
    height_m: float
    weight_kg: float
    sex: str
    habitus: float
    fat_mm: float
    suv: Dict[str, float]
    organ_scale: Dict[str, float]
    bladder_fill: float
    marrow_gcsf: bool
    brown_fat_stations: List[str]
    hot_bowel_fraction: float
    active_muscles: List[str] = field(default_factory=list)
    inflamed_joints: List[str] = field(default_factory=list)
    premenopausal: bool = False
    biopsy_station: str = ""
    metformin: bool = False
    seed: int = 0
    jitter: Dict[str, Tuple[float, float, float]] = field(default_factory=dict)


def _u(rng: np.random.Generator, key: str) -> float:
    lo, hi = UPTAKE[key]
    return float(rng.uniform(lo, hi))


def draw_patient(rng: np.random.Generator, weight_kg: float, height_m: float, sex: str,
                 brown_fat_prevalence: float = 0.12, gcsf_prevalence: float = 0.12) -> TwinPatient:
    """Draw one patient's physiology: uptake per tissue, organ sizes, bladder filling, G-CSF marrow, brown fat."""
    bmi = weight_kg / height_m ** 2
    habitus = float(np.clip(np.sqrt(bmi / 24.0), 0.82, 1.3))
    suv = {k: _u(rng, k) for k in ("fat", "muscle", "visceral", "bone", "lung", "brain_gm", "blood", "liver",
                                   "kidney", "bowel", "stomach", "tonsil", "salivary", "pancreas", "oesophagus",
                                   "soft")}
    gcsf = bool(rng.random() < gcsf_prevalence)
    suv["marrow"] = _u(rng, "marrow_gcsf" if gcsf else "marrow")
    suv["brain_wm"] = suv["brain_gm"] * float(rng.uniform(0.3, 0.45))
    suv["spleen"] = suv["liver"] * _u(rng, "spleen_ratio") * (1.3 if gcsf else 1.0)
    # myocardium: fasting and insulin make it anything from blood-pool-like to the hottest organ
    mode = rng.choice(3, p=(0.35, 0.35, 0.30))
    suv["myocardium"] = float((rng.uniform(1.2, 2.6), rng.uniform(3.0, 7.0), rng.uniform(7.0, 18.0))[mode])
    suv["urine"] = float(np.exp(rng.uniform(np.log(UPTAKE["urine"][0]), np.log(UPTAKE["urine"][1]))))
    suv["thyroid"] = _u(rng, "thyroid_hot" if rng.random() < 0.1 else "thyroid")
    suv["brown_fat"] = _u(rng, "brown_fat")
    suv["bowel_hot"] = _u(rng, "bowel_hot")
    stations: List[str] = []
    if rng.random() < brown_fat_prevalence:
        stations = ["supraclavicular"] + [s for s in ("cervical", "axillary", "paravertebral", "perirenal")
                                          if rng.random() < 0.6]
    for key in ("muscle_active", "joint", "uterus", "ovary", "testis", "inflammation"):
        suv[key] = _u(rng, key)
    # the diagnostic excisional biopsy of a superficial node weeks before staging leaves an inflamed wound in half
    biopsy = str(rng.choice(("cervical_R", "cervical_L", "axillary_R", "axillary_L", "inguinal_R", "inguinal_L"))) \
        if rng.random() < 0.5 else ""
    metformin = bool(rng.random() < 0.1)  # diabetic patients on metformin: intense diffuse bowel uptake
    active = [m for m in ("neck", "paraspinal", "psoas") if rng.random() < 0.5] if rng.random() < 0.15 else []
    joints = [j for j in ("shoulders", "hips", "sternoclavicular") if rng.random() < 0.5] if rng.random() < 0.2 \
        else []
    organ_scale = {k: float(rng.uniform(0.85, 1.15)) for k in ("liver", "spleen", "kidney", "heart", "lung",
                                                                "bladder", "brain", "stomach")}
    organ_scale["spleen"] *= 1.25 if gcsf else 1.0
    jitter = {k: tuple(float(v) for v in rng.normal(0.0, 6.0, 3)) for k in organ_scale}
    return TwinPatient(height_m=float(height_m), weight_kg=float(weight_kg), sex=str(sex), habitus=habitus,
                       fat_mm=float(np.clip(8.0 + 40.0 * (habitus - 0.85) + rng.normal(0, 3), 5.0, 35.0)),
                       suv={k: round(v, 4) for k, v in suv.items()}, organ_scale=organ_scale,
                       bladder_fill=float(rng.uniform(0.15, 1.0)), marrow_gcsf=gcsf, brown_fat_stations=stations,
                       hot_bowel_fraction=0.8 if metformin else float(rng.choice((0.0, 0.1, 0.35),
                                                                                 p=(0.5, 0.35, 0.15))),
                       biopsy_station=biopsy, metformin=metformin,
                       active_muscles=active, inflamed_joints=joints,
                       premenopausal=bool(sex == "F" and rng.random() < 0.4),
                       seed=int(rng.integers(0, 2 ** 31)), jitter=jitter)


def patient_record(p: TwinPatient) -> Dict[str, object]:
    """The patient's parameters as a JSON-safe dict (for the manifest)."""
    return {k: v for k, v in asdict(p).items() if k != "jitter"}


class BodyFrame:
    """Maps body coordinates (x, y, s) of one patient to patient millimetres (x, y, z); ``z_top`` is the vertex."""

    def __init__(self, patient: TwinPatient, z_top: float):
        self.p = patient
        self.hs = patient.height_m / 1.75
        self.k = patient.habitus
        self.ko = float(np.sqrt(patient.habitus))
        self.z_top = float(z_top)

    def point(self, x: float, y: float, s: float, organ: str = "") -> Tuple[float, float, float]:
        """Patient mm of a body point; ``organ`` adds that organ's jitter."""
        j = self.p.jitter.get(organ, (0.0, 0.0, 0.0))
        return (x * self.k + j[0], y * self.k + j[1], self.z_top - s * self.hs + j[2])

    def radii(self, rx: float, ry: float, rz: float, organ: str = "") -> Tuple[float, float, float]:
        """Patient mm radii of an organ (scaled by the organ's own size factor)."""
        f = self.p.organ_scale.get(organ, 1.0)
        return (rx * self.ko * f, ry * self.ko * f, rz * self.hs * f)

    def s_of_z(self, z: np.ndarray) -> np.ndarray:
        """Body ``s`` of patient z (mm)."""
        return (self.z_top - np.asarray(z, dtype=float)) / self.hs

    def section(self, z: np.ndarray, shrink_mm: float = 0.0, leg: int = 0) -> Section:
        """Body cross-sections at patient ``z`` shrunk by ``shrink_mm``; ``leg`` -1/+1 for a thigh below the crotch,
        0 for the trunk, neck and head (NaN where absent)."""
        s = self.s_of_z(z)
        a = np.interp(s, _PROFILE[:, 0], _PROFILE[:, 1]) * self.k
        b = np.interp(s, _PROFILE[:, 0], _PROFILE[:, 2]) * self.k
        cy = np.interp(s, _PROFILE[:, 0], _PROFILE[:, 3]) * self.k
        cx = np.zeros_like(a)
        if leg:
            present = s > S_CROTCH - 20
            a = np.where(present, 78.0 * self.k, np.nan)
            b = np.where(present, 82.0 * self.k, np.nan)
            cx = np.full_like(a, leg * 88.0 * self.k)
        else:
            present = (s >= _PROFILE[0, 0]) & (s <= S_CROTCH)
            a, b = np.where(present, a, np.nan), np.where(present, b, np.nan)
        a = a - shrink_mm
        b = b - shrink_mm
        bad = ~((a > 2) & (b > 2))
        return Section(cx=cx, cy=cy, a=np.where(bad, np.nan, a), b=np.where(bad, np.nan, b))

    def spine_y(self, s: float) -> float:
        """Body y of the vertebral body centre at ``s``."""
        return float(np.interp(s, _SPINE_Y[:, 0], _SPINE_Y[:, 1]))


def tube(frame: BodyFrame, tissue: str, points: Sequence[Tuple[float, float, float]], radius: float, suv: float,
         hu: float, step: float = 0.6, organ: str = "") -> List[Shape]:
    """Spheres of ``radius`` (mm) every ``step * radius`` along a polyline of body points."""
    pts = np.array([frame.point(*p, organ=organ) for p in points])
    out: List[Shape] = []
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / (step * radius))))
        for t in np.arange(n) / n:
            c = a + t * (b - a)
            out.append(Shape(tissue, (float(c[0]), float(c[1]), float(c[2])), (radius,) * 3, suv, hu))
    c = pts[-1]
    out.append(Shape(tissue, (float(c[0]), float(c[1]), float(c[2])), (radius,) * 3, suv, hu))
    return out


def _sh(frame: BodyFrame, tissue: str, xys: Tuple[float, float, float], r: Tuple[float, float, float], suv: float,
        organ: str = "", hu: float = None) -> Shape:
    return Shape(tissue, frame.point(*xys, organ=organ), frame.radii(*r, organ=organ), float(suv),
                 float(HU[tissue] if hu is None else hu))


#: Body-coordinate centres (x, y, s) of lymph-node stations (``_R``/``_L`` mirrored) and brown-fat depots.
STATIONS: Dict[str, Tuple[float, float, float]] = {
    "cervical_R": (-40, 5, 245), "cervical_L": (40, 5, 245),
    "supraclavicular_R": (-62, 0, 300), "supraclavicular_L": (62, 0, 300),
    "axillary_R": (-128, 18, 365), "axillary_L": (128, 18, 365),
    "mediastinal": (8, -45, 405), "paratracheal": (12, -10, 375), "subcarinal": (0, 12, 430),
    "hilar_R": (-42, 8, 445), "hilar_L": (42, 8, 445), "internal_mammary": (-28, -92, 450),
    "paracardiac": (45, -70, 535), "retrocrural": (-14, 55, 565), "coeliac": (-12, -10, 625),
    "splenic_hilum": (62, 25, 600), "paraaortic_L": (28, 40, 705), "paraaortic_R": (-12, 40, 705),
    "mesenteric": (10, -35, 725), "iliac_R": (-58, 25, 855), "iliac_L": (58, 25, 855),
    "inguinal_R": (-85, -62, 975), "inguinal_L": (85, -62, 975),
}
BROWN_FAT_DEPOTS: Dict[str, List[Tuple[float, float, float]]] = {
    "cervical": [(-45, 10, 255), (45, 10, 255)], "supraclavicular": [(-70, 5, 300), (70, 5, 300)],
    "axillary": [(-118, 15, 350), (118, 15, 350)],
    "paravertebral": [(-32, 70, s) for s in (380, 430, 480, 530)] + [(32, 70, s) for s in (380, 430, 480, 530)],
    "perirenal": [(-82, 62, 640), (82, 62, 640)],
}


def _body_layers(frame: BodyFrame, suv: Dict[str, float]) -> List[Tuple[float, str, float, int]]:
    """(shrink mm, tissue, SUV, leg) of the body sections, outside in."""
    t = frame.p.fat_mm
    layers = []
    for leg in (0, -1, 1):
        layers += [(0.0, "fat", suv["fat"], leg), (t, "muscle", suv["muscle"], leg)]
    layers.append((t + 14.0 * frame.k, "visceral", suv["visceral"], 0))
    return layers


def body_sections(frame: BodyFrame, z: np.ndarray) -> List[Tuple[Section, str, float]]:
    """The body's section layers at patient ``z``: (section, tissue, SUV), painted before :func:`anatomy_shapes`.
    The visceral layer is cut off above the neck and below the pelvis (no visceral fat in head or thighs)."""
    out = []
    s = frame.s_of_z(z)
    for shrink, tissue, value, leg in _body_layers(frame, frame.p.suv):
        sec = frame.section(z, shrink, leg)
        if tissue == "visceral":
            keep = (s > 290) & (s < 945)
            sec = Section(sec.cx, sec.cy, np.where(keep, sec.a, np.nan), np.where(keep, sec.b, np.nan))
        out.append((sec, tissue, value))
    return out


def _head_neck(f: BodyFrame, v: Dict[str, float]) -> List[Shape]:
    b = f.p.organ_scale["brain"]
    out = [_sh(f, "soft", (0, 5, 105), (72, 92, 105), v["soft"]),
           _sh(f, "bone", (0, 5, 100), (68, 88, 96), v["bone"]),
           _sh(f, "brain_gm", (0, 5, 98), (62 * b, 81 * b, 86 * b), v["brain_gm"]),
           _sh(f, "brain_wm", (0, 5, 95), (47 * b, 65 * b, 66 * b), v["brain_wm"]),
           _sh(f, "brain_gm", (-20, 0, 102), (11, 17, 13), 1.05 * v["brain_gm"]),
           _sh(f, "brain_gm", (20, 0, 102), (11, 17, 13), 1.05 * v["brain_gm"]),
           _sh(f, "brain_gm", (0, 48, 160), (48, 28, 24), 0.8 * v["brain_gm"]),
           _sh(f, "thyroid", (-18, -22, 265), (9, 9, 20), v["thyroid"]),
           _sh(f, "thyroid", (18, -22, 265), (9, 9, 20), v["thyroid"])]
    for side in (-1, 1):
        out += [_sh(f, "salivary", (side * 46, 18, 188), (13, 17, 20), v["salivary"]),
                _sh(f, "salivary", (side * 32, -22, 222), (11, 11, 10), v["salivary"]),
                _sh(f, "tonsil", (side * 16, 6, 202), (7, 8, 10), v["tonsil"])]
    return out


def _skeleton(f: BodyFrame, v: Dict[str, float], rng: np.random.Generator) -> List[Shape]:
    out: List[Shape] = []
    levels = np.linspace(215, 880, 25)
    h = float(levels[1] - levels[0])
    for s in levels:
        y = f.spine_y(s)
        w = 14 + 12 * (s - 215) / 665
        out += [_sh(f, "bone", (0, y, s), (w + 3, 0.8 * w + 3, 0.42 * h), v["bone"]),
                _sh(f, "marrow", (0, y, s), (w, 0.8 * w, 0.42 * h - 2.5), v["marrow"]),
                _sh(f, "bone", (0, y + 0.8 * w + 22, s), (7, 16, 0.35 * h), v["bone"])]
    out += [_sh(f, "bone", (0, -100, 425), (17, 9, 95), v["bone"]), _sh(f, "marrow", (0, -100, 425), (12, 5, 90),
                                                                          v["marrow"])]
    for side in (-1, 1):
        out += tube(f, "bone", [(side * 22, -88, 305), (side * 80, -60, 300), (side * 140, -10, 300)], 8,
                    v["bone"], HU["bone"])
        out += [_sh(f, "bone", (side * 112, 92, 380), (48, 9, 70), v["bone"]),
                _sh(f, "bone", (side * 92, 45, 835), (52, 16, 58), v["bone"]),
                _sh(f, "marrow", (side * 92, 45, 835), (46, 10, 52), v["marrow"]),
                _sh(f, "bone", (side * 88, 0, 935), (25, 25, 25), v["bone"]),
                _sh(f, "marrow", (side * 88, 0, 935), (20, 20, 20), v["marrow"]),
                _sh(f, "bone", (side * 26, -62, 945), (24, 12, 16), v["bone"])]
        out += tube(f, "bone", [(side * 90, 0, 950), (side * 86, 5, 1200)], 15, v["bone"], HU["bone"])
        out += tube(f, "marrow", [(side * 90, 0, 950), (side * 86, 5, 1200)], 9, 0.5 * v["marrow"], 0.0)
    out += [_sh(f, "bone", (0, 78, 905), (45, 20, 42), v["bone"]), _sh(f, "marrow", (0, 78, 905), (38, 14, 36),
                                                                        v["marrow"])]
    return out


def _thorax(f: BodyFrame, v: Dict[str, float]) -> List[Shape]:
    out: List[Shape] = []
    for side in (-1, 1):
        out.append(_sh(f, "muscle", (side * 38, 105, 590), (26, 20, 300), v["muscle"]))
        out += tube(f, "muscle", [(side * 34, 48, 690), (side * 55, 38, 850), (side * 72, 5, 925)], 20,
                    v["muscle"], HU["muscle"])
    lung = f.p.organ_scale["lung"]
    out += [_sh(f, "lung", (-88, 8, 435), (62, 88, 128 * lung), v["lung"], organ="lung"),
            _sh(f, "lung", (88, 8, 442), (62, 88, 135 * lung), v["lung"], organ="lung")]
    out += tube(f, "airway", [(0, -18, 215), (0, -10, 300), (0, 5, 395)], 9, 0.0, HU["airway"])
    out += tube(f, "oesophagus", [(4, 22, 240), (8, 28, 450), (25, 0, 570)], 7, v["oesophagus"],
                HU["oesophagus"])
    hv, bl, my = f.p.organ_scale["heart"], v["blood"], v["myocardium"]
    out += [_sh(f, "myocardium", (25, -35, 485), (60 * hv, 50 * hv, 56 * hv), my, organ="heart"),
            _sh(f, "blood", (35, -30, 488), (30 * hv, 25 * hv, 34 * hv), bl, organ="heart"),
            _sh(f, "blood", (-8, -52, 492), (26 * hv, 18 * hv, 34 * hv), bl, organ="heart")]
    out += tube(f, "blood", [(10, -40, 455), (8, -30, 372), (22, 0, 360), (28, 40, 380), (26, 55, 460),
                             (14, 42, 620), (8, 32, 790)], 13, bl, HU["blood"])
    for side in (-1, 1):
        out += tube(f, "blood", [(8, 32, 790), (side * 45, 28, 840), (side * 70, 10, 930)], 7, bl, HU["blood"])
    out += tube(f, "blood", [(-22, 30, 800), (-22, 30, 560), (-18, -20, 505)], 11, bl, HU["blood"])
    return out


def _abdomen(f: BodyFrame, v: Dict[str, float], rng: np.random.Generator) -> List[Shape]:
    out = [_sh(f, "liver", (-72, 0, 590), (82, 78, 72), v["liver"], organ="liver"),
           _sh(f, "gallbladder", (-45, -58, 648), (14, 14, 28), 0.6),
           _sh(f, "spleen", (88, 50, 592), (28, 45, 45), v["spleen"], organ="spleen"),
           _sh(f, "stomach", (45, -35, 585), (40, 34, 50), v["stomach"], organ="stomach"),
           _sh(f, "soft", (45, -35, 588), (33, 27, 42), 0.7 * v["soft"], organ="stomach", hu=12),
           _sh(f, "airway", (45, -52, 552), (24, 14, 10), 0.0, organ="stomach"),
           _sh(f, "pancreas", (5, 10, 642), (55, 12, 12), v["pancreas"])]
    urine = v["urine"]
    for side, s in ((-1, 668), (1, 652)):
        out += [_sh(f, "kidney", (side * 72, 56, s), (28, 25, 55), v["kidney"], organ="kidney"),
                _sh(f, "collecting", (side * 60, 48, s + 5), (12, 10, 22),
                    urine * float(rng.uniform(0.25, 1.0)), organ="kidney")]
        path = [(side * 52, 46, s + 12), (side * 44, 40, 730), (side * 40, 35, 800), (side * 55, 25, 860),
                (side * 30, -25, 902)]
        segs = tube(f, "ureter", path, float(rng.uniform(2.5, 3.5)), urine, HU["ureter"], step=0.7)
        run = max(4, len(segs) // 8)
        for i in range(0, len(segs), run):  # peristalsis: each ~3 cm segment full, half-full or empty
            fill = float(rng.choice((0.0, 0.3, 1.0), p=(0.45, 0.25, 0.3)))
            val = v["soft"] + fill * (urine * float(rng.uniform(0.3, 1.0)) - v["soft"])
            out += [Shape(sh.tissue, sh.centre, sh.radii, val, sh.hu) for sh in segs[i:i + run]]
    fill = f.p.bladder_fill
    out.append(_sh(f, "bladder", (0, -35, 905), (25 + 30 * fill, 20 + 25 * fill, 18 + 24 * fill), urine,
                   organ="bladder"))
    out += _bowel(f, v, rng)
    return out


def _bowel(f: BodyFrame, v: Dict[str, float], rng: np.random.Generator) -> List[Shape]:
    colon = [(-75, -20, 830), (-82, 0, 720), (-70, -30, 668), (0, -72, 690), (75, -25, 628), (88, 10, 720),
             (70, 5, 820), (35, -25, 870), (0, 62, 905)]
    out: List[Shape] = []
    radius = float(rng.uniform(17, 24))
    segs = tube(f, "bowel", colon, radius, v["bowel"], HU["bowel"], step=0.8)
    runs = [segs[i:i + 6] for i in range(0, len(segs), 6)]
    loops = []
    for _ in range(int(rng.integers(6, 11))):
        p = np.array([rng.uniform(-55, 55), rng.uniform(-60, 10), rng.uniform(690, 860)])
        pts = [tuple(p)]
        for _ in range(4):
            p = p + rng.normal(0, 22, 3)
            p = np.clip(p, (-70, -75, 680), (70, 25, 880))
            pts.append(tuple(p))
        loops.append(tube(f, "bowel", pts, float(rng.uniform(10, 14)), v["bowel"], 20.0, step=0.8))
    for run in runs + loops:
        hot = rng.random() < f.p.hot_bowel_fraction
        val = v["bowel_hot"] * float(rng.uniform(0.6, 1.0)) if hot else v["bowel"] * float(rng.uniform(0.6, 1.3))
        hu = float(rng.choice((15.0, -20.0, -600.0), p=(0.6, 0.3, 0.1)))
        out += [Shape(sh.tissue, sh.centre, sh.radii, val, hu) for sh in run]
    return out


def _brown_fat(f: BodyFrame, v: Dict[str, float], rng: np.random.Generator) -> List[Shape]:
    out: List[Shape] = []
    for station in f.p.brown_fat_stations:
        for (x, y, s) in BROWN_FAT_DEPOTS[station]:
            for _ in range(int(rng.integers(3, 8))):
                d = rng.normal(0, (10, 8, 14))
                r = float(rng.uniform(4, 9))
                out.append(_sh(f, "brown_fat", (x + d[0], y + d[1], s + d[2]), (r, r, 1.3 * r),
                               v["brown_fat"] * float(rng.uniform(0.5, 1.0))))
    return out


def _benign(f: BodyFrame, v: Dict[str, float]) -> List[Shape]:
    """Benign hot spots of some patients: active muscles, inflamed joints, uterus/ovaries, testes."""
    out: List[Shape] = []
    m, p = v["muscle_active"], f.p
    for side in (-1, 1):
        if "neck" in p.active_muscles:  # sternocleidomastoid
            out += tube(f, "muscle", [(side * 50, 15, 200), (side * 35, -20, 250), (side * 20, -80, 300)], 9, m,
                        HU["muscle"])
        if "paraspinal" in p.active_muscles:
            out.append(_sh(f, "muscle", (side * 38, 105, 590), (22, 16, 260), m))
        if "psoas" in p.active_muscles:
            out += tube(f, "muscle", [(side * 34, 48, 690), (side * 55, 38, 850)], 16, m, HU["muscle"])
        if "shoulders" in p.inflamed_joints:
            out.append(_sh(f, "joint", (side * 150, 20, 330), (14, 14, 14), v["joint"]))
        if "hips" in p.inflamed_joints:
            out.append(_sh(f, "joint", (side * 88, 0, 935), (28, 28, 12), v["joint"]))
        if "sternoclavicular" in p.inflamed_joints:
            out.append(_sh(f, "joint", (side * 22, -88, 305), (9, 9, 9), v["joint"]))
        if p.sex == "M":
            out.append(_sh(f, "gonad", (side * 16, -75, 1030), (14, 16, 20), v["testis"]))
        elif p.premenopausal:
            out.append(_sh(f, "gonad", (side * 45, 10, 880), (12, 10, 14), v["ovary"]))
    if p.biopsy_station:  # wound: from the node's station towards the skin
        x, y, s = STATIONS[p.biopsy_station]
        skin_y = -60.0 if p.biopsy_station.startswith("inguinal") else 0.0
        out.append(_sh(f, "inflammation", (1.12 * x, 0.5 * (y + skin_y), s), (14, 12, 18), v["inflammation"]))
    if p.sex == "F":
        out.append(_sh(f, "uterus", (0, 10, 880), (35, 25, 40), v["uterus"] if p.premenopausal else v["soft"]))
    return out


def anatomy_shapes(frame: BodyFrame) -> List[Shape]:
    """The patient's anatomy as shapes in painting order (after :func:`body_sections`)."""
    rng = np.random.default_rng([frame.p.seed, 7])
    v = frame.p.suv
    return (_head_neck(frame, v) + _skeleton(frame, v, rng) + _thorax(frame, v) + _benign(frame, v)
            + _abdomen(frame, v, rng) + _brown_fat(frame, v, rng))


def station_point(frame: BodyFrame, station: str) -> Tuple[float, float, float]:
    """Patient mm of a lymph-node station's centre."""
    x, y, s = STATIONS[station]
    return frame.point(x, y, s)
