#!/usr/bin/env bash
# The test command: set up what is missing (Debian packages as root, .venv, the package
# with its test extras, constrained to the CPU torch build), check the napari manifest,
# run the whole test suite (pure, Qt and full-viewer tiers; pytest-xvfb starts Xvfb).
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k space -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
echo "[test] npe2 validate napari-nrf"
.venv/bin/npe2 validate napari-nrf --imports
export MPLBACKEND=Agg
exec .venv/bin/python -m pytest "$@"
