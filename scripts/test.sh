#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv with pinned versions, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
bash scripts/install_system_packages.sh
export MPLBACKEND=Agg
# Two pytest workers (pytest-xdist): the integration tests are mostly single-threaded nnU-Net processes.
# --dist loadscope: each module runs on one worker (a module-scoped fixture is built once); the collection order
# (the most expensive modules first, tests/conftest.py) is kept, so that no worker ends alone with a long module.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadscope --no-loadscope-reorder --durations=15 "$@"
