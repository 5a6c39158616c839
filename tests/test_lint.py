"""The code passes ruff's pyflakes rules (F: unused imports and variables, undefined names, f-strings without
placeholders, ...) and E9 (syntax errors): what slips through review most often and costs nothing to check
(~1 s). ruff is pinned in requirements/pinned.txt; the rule set is deliberately minimal (no style rules)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_pyflakes_rules_pass():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "F,E9",
                           "--target-version", "py310", "--output-format", "concise",
                           "clips_nnunet", "tests", "benchmarks", "scripts"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ruff check found problems (fix them, or `ruff check --fix`):\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
