#!/usr/bin/env bash
# Create .venv and install mfdiffuser with its dev extra. Idempotent: a second run only checks.
# torch==2.13.0 goes in first: an unpinned or ranged torch pulls a CUDA build (several GB).
#   --test   also the system packages the tests need: Debian's chromium and chromium-driver
#            (the HTML report is checked in a headless browser), installed with apt when run
#            as root; otherwise it says what to run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { echo "setup: $*"; }
if [ "${1:-}" = "--test" ]; then
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    say "chromium and chromedriver found"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's chromium and chromium-driver (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    say "the browser test needs chromium and chromium-driver: run as root" \
      "'apt-get install -y chromium chromium-driver' (Debian) or 'sudo bash scripts/setup.sh --test'"
    exit 1
  fi
elif [ -n "${1:-}" ]; then
  echo "usage: bash scripts/setup.sh [--test]" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PY"
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
say "installing torch 2.13.0 (CPU) into .venv"
.venv/bin/python -m pip install -q torch==2.13.0
say "installing mfdiffuser with its dev extra (Ray, MLflow, pytest, selenium, ...)"
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -c "import torch, ray, mlflow, mfdiffuser; print(f'setup: done: mfdiffuser {mfdiffuser.__version__}: torch {torch.__version__}, ray {ray.__version__}, mlflow {mlflow.__version__}')"
