"""Pacing functions against hand-computed values (Wu et al. 2021; Platanios et al. 2019; Hacohen & Weinshall 2019)."""
import math

import pytest

from clips_nnunet.curriculum.pacing import (competence_root_p, hacohen_exponential_pacing, num_active_cases,
                                            pacing_fraction)
from clips_nnunet.errors import CurriculumConfigError


@pytest.mark.parametrize("name,t,a,b,expected", [
    ("linear", 0.5, 1.0, 0.2, 0.6),                 # 0.2 + 0.8 * 0.5
    ("linear", 1.0, 0.5, 0.2, 1.0),                 # past a: clipped to 1
    ("quadratic", 0.25, 0.5, 0.0, 0.25),            # (0.25/0.5)^2
    ("quadratic", 0.25, 0.5, 0.2, 0.4),             # 0.2 + 0.8 * 0.25
    ("root", 0.2, 0.8, 0.3, 0.65),                  # 0.3 + 0.7 * sqrt(0.25)
    ("step", 0.49, 0.5, 0.2, 0.2),
    ("step", 0.5, 0.5, 0.2, 1.0),
    ("exponential", 0.25, 0.5, 0.0, (math.exp(5) - 1) / (math.exp(10) - 1)),   # 0.0066929
    ("exponential", 0.5, 0.5, 0.1, 1.0),
    ("logarithmic", 0.05, 0.5, 0.0, 1 + 0.1 * math.log(0.1 + math.exp(-10))),  # 0.769787
    ("logarithmic", 0.0, 0.5, 0.2, 0.2),           # 0.2 + 0.8 * (1 - 1) = b
    ("logarithmic", 0.5, 0.5, 0.0, 1.0),           # 1.0000045 clipped to 1
])
def test_pacing_fraction_hand_values(name, t, a, b, expected):
    assert pacing_fraction(name, t, a, b) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_pacing_hand_numbers_are_what_we_think():
    assert (math.exp(5) - 1) / (math.exp(10) - 1) == pytest.approx(0.0066929, abs=1e-7)
    assert 1 + 0.1 * math.log(0.1 + math.exp(-10)) == pytest.approx(0.769787, abs=1e-6)


@pytest.mark.parametrize("name", ["linear", "quadratic", "root", "step", "exponential", "logarithmic"])
def test_pacing_monotone_and_within_b_1(name):
    values = [pacing_fraction(name, t / 100, 0.8, 0.25) for t in range(101)]
    assert all(0.25 <= v <= 1.0 for v in values)
    assert all(x <= y + 1e-12 for x, y in zip(values, values[1:]))
    assert values[-1] == 1.0


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="linear", t=0.5, a=1.5, b=0.1), "pacing_a must be in (0, 1], got 1.5"),
    (dict(name="linear", t=0.5, a=0.0, b=0.1), "pacing_a must be in (0, 1]"),
    (dict(name="linear", t=0.5, a=0.5, b=-0.1), "pacing_b must be in [0, 1], got -0.1"),
    (dict(name="cubic", t=0.5, a=0.5, b=0.1), "pacing must be one of"),
    (dict(name="linear", t=1.5, a=0.5, b=0.1), "t (training progress) must be in [0, 1]"),
    (dict(name="linear", t=float("nan"), a=0.5, b=0.1), "must be a finite number"),
])
def test_pacing_validation_names_parameter(kwargs, message):
    with pytest.raises(CurriculumConfigError) as err:
        pacing_fraction(**kwargs)
    assert message in str(err.value)


def test_competence_root_p_uses_one_over_p():
    # p = 2: (0.5 * (1 - 0.25) + 0.25)^(1/2) = sqrt(0.625)
    assert competence_root_p(0.5, 0.5, 2) == pytest.approx(0.7905694, abs=1e-7)
    # p = 3: (0.5 * (1 - 0.125) + 0.125)^(1/3) = 0.5625^(1/3) = 0.8254818; the 1/2 bug would give 0.75
    assert competence_root_p(0.5, 0.5, 3) == pytest.approx(0.8254818, abs=1e-7)
    assert competence_root_p(0.0, 0.3, 2) == pytest.approx(0.3)
    assert competence_root_p(2.0, 0.3, 2, T=1.0) == 1.0
    assert competence_root_p(50, 0.5, 2, T=100) == pytest.approx(0.7905694, abs=1e-7)
    with pytest.raises(CurriculumConfigError, match="c0"):
        competence_root_p(0.5, 0.0, 2)
    with pytest.raises(CurriculumConfigError, match="p \\(competence root\\) must be >= 1"):
        competence_root_p(0.5, 0.5, 0.5)


def test_hacohen_exponential_pacing():
    assert hacohen_exponential_pacing(250, 0.1, 2.0, 100) == pytest.approx(0.4)   # 0.1 * 2^2
    assert hacohen_exponential_pacing(99, 0.1, 2.0, 100) == pytest.approx(0.1)
    assert hacohen_exponential_pacing(1000, 0.1, 2.0, 100) == 1.0                # min(0.1 * 1024, 1)
    assert hacohen_exponential_pacing(10 ** 9, 0.1, 2.0, 1) == 1.0               # no overflow
    with pytest.raises(CurriculumConfigError, match="increase must be >= 1"):
        hacohen_exponential_pacing(1, 0.1, 0.5, 10)
    with pytest.raises(CurriculumConfigError, match="step must be an integer >= 1"):
        hacohen_exponential_pacing(1, 0.1, 2.0, 0)


def test_num_active_cases():
    assert num_active_cases(0.3, 10, 0.0, 1) == 3      # ceil(3.0000000000000004) must still be 3
    assert num_active_cases(0.31, 10, 0.0, 1) == 4
    assert num_active_cases(0.25, 10, 0.5, 1) == 5     # ceil(b N)
    assert num_active_cases(0.1, 10, 0.0, 4) == 4      # min_cases
    assert num_active_cases(0.01, 10, 0.0, 0) == 1
    assert num_active_cases(1.0, 10, 0.0, 20) == 10    # never more than N
    with pytest.raises(CurriculumConfigError, match="training split is empty"):
        num_active_cases(0.5, 0, 0.0, 1)
