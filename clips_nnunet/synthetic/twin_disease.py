"""DLBCL disease of the whole-body twin: lesions at nodal stations and extranodal sites, with baseline-like burden.

Per patient (:func:`draw_disease`):

* total metabolic tumour volume (TMTV, ml): log-normal, median :data:`TMTV_MEDIAN_ML`, log-sd :data:`TMTV_LOG_SD`,
  clipped to [2, 3500] ml (a long tail from a few ml to over 2 litres);
* lesion count: ``1 + NegBin`` with mean growing with TMTV (``1.5 (TMTV / 10 ml)^0.45``), at most 40;
* the hottest lesion's SUVmax: log-normal, median :data:`SUVMAX_MEDIAN`, log-sd 0.45, clipped to [3, 60]; other
  lesions 35-100 % of it (never below 1.2 x liver);
* lesion volumes: the TMTV split by a Dirichlet(0.7) (one or a few dominant masses), each at least 0.3 ml;
* sites: the dominant lesion at a nodal station (mediastinal and abdominal most often), the others at stations
  (mostly neighbours of sites already involved) or, with probability :data:`EXTRANODAL_P`, at an extranodal site
  (stomach, bowel, spleen, liver, bone, lung, Waldeyer's ring);
* shape: a lesion is 1 to 9 overlapping ellipsoidal lobules (lobulated, confluent), each with its own uptake
  (70-100 % of the lesion's) falling from its centre to 30-70 % of that at its surface (:data:`FALLOFF`: viable
  rim and centre differ, so no single threshold traces every lesion's edge); a lesion above :data:`BULKY_ML` has a necrotic core with probability 0.6 (SUV 0.8-1.5,
  30-50 % of the mass's radius), which is not part of the lesion masks.

Heterogeneous uptake inside each lesion (cold patches, depth :attr:`TwinLesion.heterogeneity`) is applied after
painting by :func:`clips_nnunet.synthetic.twin.apply_heterogeneity`.

The resulting true TMTV is measured on the truth mask after rasterisation (the lobules overlap, so it is below the
drawn value); docs/synthetic.md records the distributions measured and the sources they follow.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

from clips_nnunet.synthetic.twin_anatomy import HU, STATIONS, BodyFrame
from clips_nnunet.synthetic.twin_render import Shape

TMTV_MEDIAN_ML = 300.0
TMTV_LOG_SD = 1.2
SUVMAX_MEDIAN = 17.0
EXTRANODAL_P = 0.25
BULKY_ML = 100.0
FALLOFF = (0.3, 0.7)
LOBULE_OVERLAP = 1.15  # lobules overlap: their summed volume exceeds the lesion's; measured TMTV / drawn ~ 1  # uptake at a lobule's surface is 30-70 % of its centre's
# where the dominant lesion sits, with weights
_DOMINANT = {"mediastinal": 3.0, "mesenteric": 2.0, "paraaortic_L": 1.5, "paraaortic_R": 1.0, "cervical_R": 1.0,
             "cervical_L": 1.0, "axillary_R": 0.6, "axillary_L": 0.6, "iliac_R": 0.6, "iliac_L": 0.6,
             "coeliac": 0.6, "splenic_hilum": 0.4, "inguinal_R": 0.3, "inguinal_L": 0.3}
# extranodal sites: body centre (x, y, s), spread (mm) and the host tissue
EXTRANODAL: Dict[str, Tuple[Tuple[float, float, float], Tuple[float, float, float]]] = {
    "stomach": ((45, -40, 585), (15, 10, 20)), "bowel": ((0, -40, 760), (45, 25, 60)),
    "spleen": ((88, 50, 592), (14, 22, 25)), "liver": ((-72, 0, 590), (45, 40, 40)),
    "bone_spine": ((0, 60, 650), (3, 8, 200)), "bone_pelvis": ((-92, 45, 835), (12, 8, 25)),
    "lung": ((88, 8, 440), (25, 40, 60)), "waldeyer": ((16, 6, 202), (2, 2, 4)),
}


@dataclass
class TwinLesion:
    """One lesion: site, kind (nodal/extranodal), drawn volume (ml), uptake, lobules and necrotic core."""
    lesion_id: int
    site: str
    kind: str
    volume_ml: float
    suv: float
    centre: Tuple[float, float, float]
    lobules: List[Tuple[Tuple[float, float, float], Tuple[float, float, float], float]]
    core: Tuple[Tuple[float, float, float], Tuple[float, float, float], float] = None
    falloff: float = 0.0
    heterogeneity: float = 0.0  # depth of the cold patches (set by ``twin.make_twin``)

    def shapes(self) -> List[Shape]:
        """Lobules (lesion id) then the necrotic core (id -1), for the painters."""
        out = [Shape("lesion", c, r, s, HU["lesion"], lesion=self.lesion_id, falloff=self.falloff)
               for c, r, s in self.lobules]
        if self.core is not None:
            c, r, s = self.core
            out.append(Shape("necrosis", c, r, s, HU["necrosis"], lesion=-1))
        return out

    def record(self) -> Dict[str, Any]:
        """JSON-safe summary (no lobule list)."""
        d = asdict(self)
        d["n_lobules"] = len(d.pop("lobules"))
        d["necrotic"] = d.pop("core") is not None
        return d


def _neighbours(station: str) -> List[str]:
    x, y, s = STATIONS[station]
    dist = {k: np.hypot(np.hypot(x - v[0], y - v[1]), s - v[2]) for k, v in STATIONS.items() if k != station}
    return sorted(dist, key=dist.get)[:4]


def _clamp(frame: BodyFrame, x: float, y: float, s: float, margin: float) -> Tuple[float, float, float]:
    """Keep a body point ``margin`` mm inside the trunk section at its level."""
    sec = frame.section(np.array([frame.point(0, 0, s)[2]]), frame.p.fat_mm + margin)
    a = sec.a[0] / frame.k if np.isfinite(sec.a[0]) else 30.0
    b = sec.b[0] / frame.k if np.isfinite(sec.b[0]) else 30.0
    cy = sec.cy[0] / frame.k
    q = np.hypot(x / a, (y - cy) / b)
    if q > 1:
        x, y = x / q, cy + (y - cy) / q
    return float(x), float(y), float(s)


def make_lobules(centre: Tuple[float, float, float], volume: float, suv: float, rng: np.random.Generator,
                 lobulated: bool = True) -> List[Tuple[Tuple[float, float, float], Tuple[float, float, float], float]]:
    """Lobules (centre, radii, SUV) of a lesion of ``volume`` ml around ``centre`` (patient mm): one ball below 2 ml
    or when not ``lobulated``, else 2-9 ellipsoids sharing the volume (Dirichlet(2)), offset around the centre."""
    r_eq = (3.0 * volume * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    if not lobulated:
        return [(tuple(float(c) for c in centre), (r_eq, r_eq, r_eq), float(suv))]
    n = 1 if volume < 2.0 else int(min(9, 2 + rng.poisson(np.log1p(volume / 5.0))))
    shares = rng.dirichlet(np.full(n, 2.0))
    lobules = []
    for k in range(n):
        r = (3.0 * LOBULE_OVERLAP * shares[k] * volume * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        radii = tuple(float(r * e) for e in rng.uniform(0.75, 1.3, 3))
        off = rng.normal(0, 0.55 * r_eq, 3) if k else np.zeros(3)
        c = tuple(float(a + b) for a, b in zip(centre, off))
        lobules.append((c, radii, float(suv * (1.0 if k == 0 else rng.uniform(0.7, 1.0)))))
    return lobules


def _lesion(frame: BodyFrame, rng: np.random.Generator, lid: int, site: str, kind: str, centre_body, volume: float,
            suv: float, spread) -> TwinLesion:
    x, y, s = (c + float(rng.normal(0, sd)) for c, sd in zip(centre_body, spread))
    r_eq = (3.0 * volume * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    x, y, s = _clamp(frame, x, y, s, margin=min(r_eq, 40.0) * 0.5)
    centre = frame.point(x, y, s)
    lobules = make_lobules(centre, volume, suv, rng)
    core = None
    if volume > BULKY_ML and rng.random() < 0.6:
        fr = float(rng.uniform(0.3, 0.5))
        core = (tuple(float(c) for c in centre), (fr * r_eq,) * 3, float(rng.uniform(0.8, 1.5)))
    return TwinLesion(lid, site, kind, float(volume), float(suv), tuple(float(c) for c in centre), lobules, core,
                      falloff=float(rng.uniform(*FALLOFF)))


def draw_disease(frame: BodyFrame, rng: np.random.Generator, n_lesions: int = None) -> List[TwinLesion]:
    """Draw one patient's lesions (see the module docstring); ``n_lesions`` forces the count (tests)."""
    liver = frame.p.suv["liver"]
    tmtv = float(np.clip(np.exp(rng.normal(np.log(TMTV_MEDIAN_ML), TMTV_LOG_SD)), 2.0, 3500.0))
    if n_lesions is None:
        mean = 1.5 * (tmtv / 10.0) ** 0.45
        n_lesions = int(min(40, 1 + rng.negative_binomial(2, 2.0 / (2.0 + mean))))
    suvmax = float(np.clip(np.exp(rng.normal(np.log(SUVMAX_MEDIAN), 0.45)), 3.0, 60.0))
    suvmax = max(suvmax, 1.5 * liver)
    volumes = np.maximum(rng.dirichlet(np.full(n_lesions, 0.7)) * tmtv, 0.3)
    volumes = np.sort(volumes)[::-1]
    names = list(_DOMINANT)
    weights = np.array([_DOMINANT[k] for k in names])
    first = str(rng.choice(names, p=weights / weights.sum()))
    involved = [first]
    lesions: List[TwinLesion] = []
    for i, vol in enumerate(volumes):
        suv = suvmax if i == 0 else float(max(1.2 * liver, suvmax * rng.uniform(0.35, 1.0)))
        if i > 0 and rng.random() < EXTRANODAL_P:
            site = str(rng.choice(list(EXTRANODAL)))
            centre, spread = EXTRANODAL[site]
            vol = min(vol, 60.0 if site in ("waldeyer", "lung", "bone_spine", "bone_pelvis") else 400.0)
            lesions.append(_lesion(frame, rng, i + 1, site, "extranodal", centre, vol, suv, spread))
            continue
        if i == 0:
            site = first
        elif rng.random() < 0.7:
            site = str(rng.choice(_neighbours(str(rng.choice(involved)))))
        else:
            site = str(rng.choice(list(STATIONS)))
        involved.append(site)
        lesions.append(_lesion(frame, rng, i + 1, site, "nodal", STATIONS[site], vol, suv, (12.0, 10.0, 18.0)))
    return lesions
