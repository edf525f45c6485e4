#!/usr/bin/env bash
# Create .venv and install mfdiffuser with its dev extra. Idempotent: a second run only checks.
# torch==2.13.0 goes in first: an unpinned or ranged torch pulls a CUDA build (several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -c "import torch, ray, mlflow, mfdiffuser; print(f'mfdiffuser {mfdiffuser.__version__}: torch {torch.__version__}, ray {ray.__version__}, mlflow {mlflow.__version__}')"
