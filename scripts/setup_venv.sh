#!/usr/bin/env bash
# Create .venv (if missing) and install clips-nnunet with the pinned versions of everything it needs.
# Idempotent: a second run only checks. Usage: bash scripts/setup_venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.clips-installed
# setup.py and the .pth it ships are part of the stamp: a change reinstalls, so the venv carries zero-setup discovery
want=$(cat requirements/pinned.txt setup.cfg setup.py pyproject.toml clips_nnunet_autodiscovery.pth | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade "pip==24.3.1" "setuptools>=68" wheel
  # torch first, from the pinned pair (torchvision must match torch; see README "Installation").
  .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install --quiet -r requirements/pinned.txt
  # editable install; setup.py also places clips_nnunet_autodiscovery.pth in site-packages, which appends the
  # trainer shim to nnUNet_extTrainer at every interpreter start (opt out: CLIPS_NNUNET_NO_AUTODISCOVERY=1)
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
if ! ls .venv/lib/python*/site-packages/clips_nnunet_autodiscovery.pth > /dev/null 2>&1; then
  .venv/bin/python -m pip install --quiet --no-deps -e .   # an older install without the discovery .pth
fi
