#!/usr/bin/env bash
# Set-up used by the README's two commands and by CI: creates .venv (once) and installs
# avvp-lightning with its test extras. Without an NVIDIA GPU it installs the CPU build of
# PyTorch first, so pip never pulls the multi-GB CUDA build; with one, the normal build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install "torch>=2.4"
  else
    # A CPU wheel on local disk (pip's configured find-links) where the machine has one
    # (its dependencies from the configured indexes), else PyTorch's CPU index.
    pip install "torch==2.13.0+cpu" 2>/dev/null \
      || pip install "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
pip install -q -e ".[test]"
