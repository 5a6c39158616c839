"""The reports' number formats (clips_nnunet.evaluation.formatting)."""
import numpy as np

from clips_nnunet.evaluation.formatting import fmt_fixed, fmt_p, fmt_significant


def test_fmt_fixed():
    assert fmt_fixed(0.94449) == "0.944"
    assert fmt_fixed(3, 1) == "3.0" and fmt_fixed(np.float32(0.5), 2) == "0.50"  # any real number
    assert fmt_fixed(None) == fmt_fixed(float("nan")) == fmt_fixed(float("inf")) == "n/a"
    assert fmt_fixed("stock") == "stock" and fmt_fixed(True) == "True"


def test_fmt_significant():
    assert fmt_significant(0.0123456) == "0.0123" and fmt_significant(1234.5) == "1.23e+03"
    assert fmt_significant(123456.0) == "1.235e+05"  # scientific from 1e4
    assert fmt_significant(3e-12) == "0"  # float noise
    assert fmt_significant(float("nan")) == "n/a" and fmt_significant(7) == "7"


def test_fmt_p():
    assert fmt_p(0.0004) == "<0.001" and fmt_p(0.04951) == "0.050" and fmt_p(1.0) == "1.000"
    assert fmt_p(None) == fmt_p(float("nan")) == fmt_p("0.1") == "n/a"
