#!/usr/bin/env bash
# The main job: set up what is missing, then open napari with the plugin, the demo model
# and a rendered response volume. On a machine without a display it runs under Xvfb and
# saves a screenshot instead (outputs/demo.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
  mkdir -p outputs
  echo "[demo] no display: running under Xvfb, screenshot -> outputs/demo.png"
  exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/napari-nrf demo --no-show --screenshot outputs/demo.png "$@"
fi
exec .venv/bin/napari-nrf demo "$@"
