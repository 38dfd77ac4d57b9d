#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine with python3:
#   1. the Debian packages Xvfb and Qt need (only when running as root and they are missing),
#   2. a virtual environment in .venv,
#   3. the package itself (editable) with the extras it needs, constrained to the CPU torch build.
# Re-running is cheap: each step checks first.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
EXTRAS="${NRF_EXTRAS:-all,test}"

DEB_PKGS="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxcb-image0 libxcb-render-util0 \
libxcb-shape0 libxcb-xinerama0 libxcb-randr0 libxcb-xfixes0 libxcb-xkb1 libxkbcommon-x11-0 \
libgl1-mesa-dri libglx-mesa0 libegl1 libgl1 libdbus-1-3 libfontconfig1 libxrender1 libxi6 libsm6 libice6"

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  missing=""
  for p in $DEB_PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    echo "[bootstrap] installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
elif ! command -v Xvfb >/dev/null 2>&1; then
  echo "[bootstrap] note: Xvfb is missing and this is not root; install it with:" >&2
  echo "  sudo apt-get install $DEB_PKGS" >&2
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  "$PY" -m venv .venv
fi

STAMP=.venv/.napari-nrf-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ constraints.txt -nt "$STAMP" ] \
   || [ "$(cat "$STAMP" 2>/dev/null)" != "$EXTRAS" ]; then
  echo "[bootstrap] installing napari-nrf[$EXTRAS] into .venv (first run: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  CONS=constraints.txt
  if .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    # A torch the user installed (e.g. a CUDA build): keep exactly that one.
    CONS=.venv/torch-constraint.txt
    .venv/bin/python -c "import torch; print('torch==' + torch.__version__)" > "$CONS"
  else
    # torch first, pinned, so nothing below can swap it for a CUDA build.
    .venv/bin/python -m pip install -q -c "$CONS" torch==2.13.0
  fi
  .venv/bin/python -m pip install -q -c "$CONS" -e ".[$EXTRAS]"
  echo "$EXTRAS" > "$STAMP"
fi
