"""Pacing functions: how much of the training set a curriculum may use at training progress ``t``.

All functions are plain numpy/math, deterministic and validate their arguments with
:class:`~clips_nnunet.errors.CurriculumConfigError` naming the parameter and its valid range.

References
----------
- Wu, Dyer & Neyshabur (2021), "When do curricula work?", ICLR. Pacing functions g(t) with
  ``a`` = fraction of training after which all data is used and ``b`` = initial fraction of data.
- Platanios et al. (2019), "Competence-based curriculum learning for neural machine translation", NAACL,
  competence root-p, eq. (7) generalised: ``c(t) = min(1, (t (1 - c0^p) / T + c0^p)^(1/p))``.
- Hacohen & Weinshall (2019), "On the power of curriculum learning in training deep networks", ICML,
  fixed exponential pacing: ``g(i) = min(s * inc^floor(i / step), 1)``.
"""
from __future__ import annotations

import math

from clips_nnunet.errors import CurriculumConfigError

PACING_NAMES = ("linear", "quadratic", "root", "step", "exponential", "logarithmic")


def _check_finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise CurriculumConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise CurriculumConfigError(f"{name} must be a finite number, got {value!r}")
    return value


def validate_pacing(name: str, a: float, b: float) -> None:
    """Check a pacing configuration: ``name`` in :data:`PACING_NAMES`, ``a`` in (0, 1], ``b`` in [0, 1].

    Raises :class:`CurriculumConfigError` naming the wrong parameter, its valid range and the value given.
    """
    if name not in PACING_NAMES:
        raise CurriculumConfigError(f"pacing must be one of {', '.join(PACING_NAMES)}, got {name!r}")
    a = _check_finite("pacing_a", a)
    b = _check_finite("pacing_b", b)
    if not 0.0 < a <= 1.0:
        raise CurriculumConfigError(f"pacing_a must be in (0, 1], got {a} (a = fraction of training after which "
                                    f"all cases are used)")
    if not 0.0 <= b <= 1.0:
        raise CurriculumConfigError(f"pacing_b must be in [0, 1], got {b} (b = initial fraction of cases)")


def pacing_fraction(name: str, t: float, a: float, b: float) -> float:
    """Fraction of cases available at training progress ``t`` (Wu, Dyer & Neyshabur 2021, section 2).

    With ``a`` = fraction of training at which all cases are in and ``b`` = initial fraction:

    - linear:      ``b + (1-b) * t/a``
    - quadratic:   ``b + (1-b) * (t/a)^2``
    - root:        ``b + (1-b) * (t/a)^0.5``
    - step:        ``b`` while ``t < a``, then 1
    - exponential: ``b + (1-b) * (exp(10 t/a) - 1) / (exp(10) - 1)``
    - logarithmic: ``b + (1-b) * (1 + 0.1 * log(t/a + e^-10))``

    The result is clipped to ``[b, 1]``. ``t`` must be in [0, 1] (progress = epoch / number of epochs).
    """
    validate_pacing(name, a, b)
    t = _check_finite("t (training progress)", t)
    if not 0.0 <= t <= 1.0:
        raise CurriculumConfigError(f"t (training progress) must be in [0, 1], got {t}")
    x = t / a
    if name == "linear":
        g = b + (1 - b) * x
    elif name == "quadratic":
        g = b + (1 - b) * x ** 2
    elif name == "root":
        g = b + (1 - b) * math.sqrt(x)
    elif name == "step":
        g = b if t < a else 1.0
    elif name == "exponential":
        # exp(10 x) overflows only for x > ~70, i.e. never inside [0, 1/a] with a >= 1/70; clip x first
        g = b + (1 - b) * (math.exp(10 * min(x, 1.0)) - 1) / (math.exp(10) - 1)
    else:  # logarithmic
        g = b + (1 - b) * (1 + 0.1 * math.log(x + math.exp(-10)))
    return float(min(1.0, max(b, g)))


def competence_root_p(t: float, c0: float, p: float, T: float = 1.0) -> float:
    """Competence root-p of Platanios et al. (2019): ``c(t) = min(1, (t (1 - c0^p) / T + c0^p)^(1/p))``.

    ``c0`` in (0, 1] is the initial competence, ``p`` >= 1 the root (p=2 is "competence sqrt"), ``T`` > 0 the
    duration after which competence is 1, ``t`` >= 0 the current time in the same unit as ``T``. The exponent is
    1/p (a popular toolkit uses 1/2 for every p, which is a bug).
    """
    t = _check_finite("t", t)
    c0 = _check_finite("c0", c0)
    p = _check_finite("p", p)
    T = _check_finite("T", T)
    if t < 0:
        raise CurriculumConfigError(f"t must be >= 0, got {t}")
    if not 0.0 < c0 <= 1.0:
        raise CurriculumConfigError(f"c0 (initial competence) must be in (0, 1], got {c0}")
    if p < 1.0:
        raise CurriculumConfigError(f"p (competence root) must be >= 1, got {p}")
    if T <= 0:
        raise CurriculumConfigError(f"T (curriculum duration) must be > 0, got {T}")
    c0p = c0 ** p
    return float(min(1.0, (t * (1.0 - c0p) / T + c0p) ** (1.0 / p)))


def hacohen_exponential_pacing(iteration: int, start_fraction: float, increase: float, step: int) -> float:
    """Fixed exponential pacing of Hacohen & Weinshall (2019): ``min(s * inc^floor(i / step), 1)``.

    ``start_fraction`` (s) in (0, 1], ``increase`` (inc) >= 1, ``step`` >= 1 iterations, ``iteration`` (i) >= 0.
    """
    s = _check_finite("start_fraction", start_fraction)
    inc = _check_finite("increase", increase)
    if not 0.0 < s <= 1.0:
        raise CurriculumConfigError(f"start_fraction must be in (0, 1], got {s}")
    if inc < 1.0:
        raise CurriculumConfigError(f"increase must be >= 1, got {inc}")
    if int(step) != step or step < 1:
        raise CurriculumConfigError(f"step must be an integer >= 1, got {step!r}")
    if int(iteration) != iteration or iteration < 0:
        raise CurriculumConfigError(f"iteration must be an integer >= 0, got {iteration!r}")
    exponent = int(iteration) // int(step)
    if inc > 1.0 and exponent * math.log(inc) + math.log(s) >= 0:
        return 1.0
    return float(min(s * inc ** exponent, 1.0))


def _ceil(x: float) -> int:
    """Ceiling robust to float noise (0.3 * 10 = 3.0000000000000004 must give 3)."""
    return int(math.ceil(x - 1e-9))


def num_active_cases(fraction: float, n_cases: int, b: float = 0.0, min_cases: int = 1) -> int:
    """Number of cases a curriculum admits: ``min(N, max(ceil(fraction N), ceil(b N), min_cases))``.

    So a curriculum never trains on fewer than ``max(ceil(b N), min_cases)`` cases (Wu et al. 2021's ``b`` and a
    floor that keeps batches from repeating one case) and never on more than all N.
    """
    fraction = _check_finite("fraction", fraction)
    b = _check_finite("pacing_b", b)
    if not 0.0 <= fraction <= 1.0:
        raise CurriculumConfigError(f"fraction must be in [0, 1], got {fraction}")
    if not 0.0 <= b <= 1.0:
        raise CurriculumConfigError(f"pacing_b must be in [0, 1], got {b}")
    if int(n_cases) != n_cases or n_cases < 1:
        raise CurriculumConfigError(f"n_cases must be an integer >= 1 (the training split is empty?), got {n_cases!r}")
    if int(min_cases) != min_cases or min_cases < 0:
        raise CurriculumConfigError(f"min_cases must be an integer >= 0, got {min_cases!r}")
    n = int(n_cases)
    return int(min(n, max(_ceil(fraction * n), _ceil(b * n), int(min_cases))))
