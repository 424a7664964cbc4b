#!/usr/bin/env bash
# Installs compress into ./.venv on a fresh machine: build tools, torch (2.14.1 unless TORCH_VERSION
# says otherwise), then the package itself (C++ kernels always, CUDA kernels where nvcc is found)
# with its test extras. Safe to run again: steps already done are quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.14.1}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=64" wheel ninja numpy
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==$TORCH_VERSION"
fi
# --no-build-isolation: compile against the torch just installed, not a second copy.
MAX_JOBS=${MAX_JOBS:-2} .venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
# Silero VAD weights for tests/test_silero_vad.py, read offline from the package's files (never
# imported). --no-deps: only those files are needed, and pip must not re-resolve the pinned torch.
.venv/bin/python -m pip install -q --no-deps "silero-vad==6.2.3"
.venv/bin/python -m compress info | head -4
