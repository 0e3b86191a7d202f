#!/usr/bin/env bash
# Every GPU path checked in one command on a bare CUDA machine (scripts/gpu_check.py says what and why).
#
#   scripts/gpu_check.sh                  # on the GPU machine: install, then steps a-d (about 8 minutes)
#   scripts/gpu_check.sh --dry-run        # the same steps on CPU with the tiny model (CI: tests/test_gpu_check.py)
#   scripts/gpu_check.sh --prepare-wheels # here, with a package index: fetch scripts/gpu_wheels.txt into .whl/
#
# The GPU machine has PyTorch, transformers and safetensors preinstalled and no package index. What else
# is needed travels as wheels in .whl/ (prepared here); they and this project are installed with --no-deps
# into a private target directory, so the preinstalled torch is the one used. Other options go to
# gpu_check.py (--out-dir, --steps, --budget-s, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "--prepare-wheels" ]]; then
  mkdir -p .whl
  grep -o '^[A-Za-z0-9_.-]*==[^ ]*' scripts/gpu_wheels.txt | xargs "$PY" -m pip download --no-deps \
    --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl
  du -sh .whl
  exit 0
fi

SITE="$(mktemp -d)/site"
if compgen -G ".whl/*.whl" > /dev/null; then
  echo "installing $(ls .whl | wc -l) wheels from .whl/ (--no-deps) into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
echo "installing this project (--no-deps, on the preinstalled torch) into $SITE"
if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --target "$SITE" . ; then
  echo "warning: the project did not install; running it from the source tree" >&2
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec "$PY" scripts/gpu_check.py "$@"
