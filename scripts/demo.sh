#!/usr/bin/env bash
# The main job (README): set up .venv with pinned versions, then run the end-to-end demo on synthetic patients.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export MPLBACKEND=Agg
exec .venv/bin/clips-nnunet demo "$@"
