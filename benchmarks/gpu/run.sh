#!/usr/bin/env bash
# The prepared GPU run of napari-nrf (issue 19). From the repository root, on a bare GPU
# machine (python 3.12 + torch, timm, safetensors, h5py, scipy, scikit-learn, scikit-image,
# tqdm; no network):
#     benchmarks/gpu/run.sh [--compile] [--cuda-graphs]        # JSON under $OUT (default ./gpu-out)
#     benchmarks/gpu/run.sh --dry-run                           # the CPU check, tiny sizes
#     benchmarks/gpu/run.sh --scale                             # + bench_scale.py's single-GPU rows (issue 18)
# 1. installs the packages it lacks (nibabel, nilearn, open_clip, pytest, ...) from the
#    wheels in benchmarks/gpu/wheels/ (fetch_wheels.sh downloads them; git-ignored), into a
#    private folder put on PYTHONPATH (nothing of the machine's own environment changes);
# 2. runs benchmarks/gpu/bench_gpu.py (each stage with its own budget; JSON per stage);
# 3. runs `pytest -m cuda tests/test_cuda.py` (CUDA paths against the CPU);
# 4. optionally the torch.compile / CUDA-graph experiments, if time is left.
# Every step has its own time limit; the whole run stays under 6 minutes.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
dry=0; extras=(); scale=0
for a in "$@"; do
  case "$a" in
    --dry-run) dry=1 ;;
    --scale) scale=1 ;;
    --compile|--cuda-graphs) extras+=("$a") ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
out="${OUT:-$root/gpu-out}"
mkdir -p "$out"
# At most 8 files come back from $OUT: results.json, extras.json, pytest_cuda.json, log.txt.
exec > >(tee -a "$out/log.txt") 2>&1
t_start=$(date +%s)
log() { echo "[run.sh $(( $(date +%s) - t_start )) s] $*"; }

# ---- 1. missing packages from the wheels ---------------------------------------------------
site="${NRF_GPU_SITE:-${TMPDIR:-/tmp}/napari-nrf-gpu-site}"
wheels="$root/benchmarks/gpu/wheels"
installed=""
if [ -d "$wheels" ]; then
  # Wheels whose distribution is not installed here (pip would otherwise re-resolve torch).
  mapfile -t missing < <("$py" - "$wheels" <<'PY'
import sys, re
from pathlib import Path
from importlib.metadata import distribution, PackageNotFoundError
for w in sorted(Path(sys.argv[1]).glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower()
    try:
        distribution(name)
    except PackageNotFoundError:
        print(w)
PY
)
  if [ "${#missing[@]}" -gt 0 ]; then
    installed="$(for w in "${missing[@]}"; do basename "$w" | cut -d- -f1; done | tr '\n' ' ')"
    log "installing from wheels: $installed"
    mkdir -p "$site"
    if ! timeout 120 "$py" -m pip install --quiet --no-index --find-links "$wheels" --no-deps --no-compile \
         --no-cache-dir --upgrade --target "$site" "${missing[@]}"; then
      # No pip (or it refused): a wheel is a zip archive of an importable tree.
      log "pip failed; unpacking the wheels instead"
      "$py" - "$site" "${missing[@]}" <<'PY'
import sys, zipfile
for w in sys.argv[2:]:
    zipfile.ZipFile(w).extractall(sys.argv[1])
PY
    fi
  else
    log "nothing to install: every wheel's package is present"
  fi
else
  log "no $wheels folder (run benchmarks/gpu/fetch_wheels.sh on a machine with PyPI)"
fi
export PYTHONPATH="$root/src${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export NRF_GPU_INSTALLED="$installed"
export MPLBACKEND=Agg
export NAPARI_NRF_CACHE="${NAPARI_NRF_CACHE:-${TMPDIR:-/tmp}/napari-nrf-gpu-cache}"

# ---- 2. the benchmark ---------------------------------------------------------------------------
export PYTHONUNBUFFERED=1
if [ "$dry" = 1 ]; then
  timeout 120 "$py" benchmarks/gpu/bench_gpu.py --out "$out/results.json" --dry-run
else
  timeout 270 "$py" benchmarks/gpu/bench_gpu.py --out "$out/results.json" --deadline-s 250
fi
log "bench_gpu rc $?"

# ---- 3. the CUDA tests --------------------------------------------------------------------------
work="$(mktemp -d)"
timeout $([ "$dry" = 1 ] && echo 60 || echo 90) "$py" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider \
  --junitxml="$work/pytest_cuda.xml" >"$work/pytest_cuda.txt" 2>&1
rc=$?
"$py" - "$out" "$work" "$rc" <<'PY'
import json, sys
from pathlib import Path
out, work, rc = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
text = (work / "pytest_cuda.txt").read_text(errors="replace") if (work / "pytest_cuda.txt").exists() else ""
lines = text.strip().splitlines()
res = {"rc": rc, "last_line": lines[-1] if lines else "", "output_tail": text[-20000:]}
try:
    import xml.etree.ElementTree as ET
    r = ET.parse(work / "pytest_cuda.xml").getroot()
    s = r if r.tag == "testsuite" else r.find("testsuite")
    res.update({k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
    res["cases"] = [{"name": c.get("name"), "seconds": float(c.get("time", 0)),
                     "outcome": ("failed" if c.find("failure") is not None or c.find("error") is not None
                                 else "skipped" if c.find("skipped") is not None else "passed")} for c in s.iter("testcase")]
except Exception as e:  # noqa: BLE001
    res["xml"] = f"unreadable: {e}"
(out / "pytest_cuda.json").write_text(json.dumps(res, indent=1))
print(json.dumps({k: v for k, v in res.items() if k != "cases"}))
PY
log "pytest -m cuda rc $rc"

# ---- 4. opt-in experiments, only with time to spare (budget 330 s before them) ------------------
if [ "${#extras[@]}" -gt 0 ]; then
  left=$(( 330 - ($(date +%s) - t_start) ))
  if [ "$left" -gt 40 ]; then
    only=""
    for e in "${extras[@]}"; do case "$e" in --compile) only+="compile," ;; --cuda-graphs) only+="graphs," ;; esac; done
    timeout "$left" "$py" benchmarks/gpu/bench_gpu.py --out "$out/extras.json" "${extras[@]}" --only "${only%,}" \
      --deadline-s $(( left - 10 )) $([ "$dry" = 1 ] && echo --dry-run)
    log "extras rc $?"
  else
    log "extras skipped: $left s left"
  fi
fi
# ---- 5. opt-in (--scale, issue 18): the single-GPU rows of benchmarks/bench_scale.py ---------------
if [ "$scale" = 1 ]; then
  left=$(( 345 - ($(date +%s) - t_start) ))
  if [ "$left" -gt 30 ]; then
    if [ "$dry" = 1 ]; then
      timeout "$left" "$py" benchmarks/bench_scale.py --cuda --images 32 --voxels 500 --steps 6 --batch-voxels 200 \
        --query-images 4 --query-batch 2 --json "$out/scale.json"
    else
      timeout "$left" "$py" benchmarks/bench_scale.py --cuda --json "$out/scale.json"
    fi
    log "bench_scale rc $?"
  else
    log "bench_scale skipped: $left s left"
  fi
fi
log "done; results in $out"
sleep 1  # let tee finish log.txt
