#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv with pinned versions, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
bash scripts/install_system_packages.sh
export MPLBACKEND=Agg
# Two pytest workers (pytest-xdist): the integration tests are mostly single-threaded nnU-Net processes.
# --dist loadgroup: a module with a module-scoped fixture runs on one worker (tests/conftest.py groups it); the
# collection order (slowest first, tests/conftest.py) is kept, so that no worker ends alone with a long test.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --no-loadscope-reorder --durations=15 "$@"
