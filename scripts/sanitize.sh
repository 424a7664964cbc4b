#!/usr/bin/env bash
# Runs the CUDA tests (pytest -m cuda) under NVIDIA compute-sanitizer, once per tool (memcheck and
# racecheck by default), and exits non-zero if any tool reports an error or any test fails.
#
#   scripts/sanitize.sh                         # memcheck + racecheck over every cuda-marked test
#   TOOLS="memcheck initcheck synccheck" scripts/sanitize.sh
#   scripts/sanitize.sh tests/test_int8_mm.py   # pytest arguments replace the default test selection
#
# Environment: PYTHON (default .venv/bin/python, else python3), TOOLS, SANITIZER (the
# compute-sanitizer binary; default: on PATH, else $CUDA_HOME/bin, else /usr/local/cuda/bin).
# Logs: build/sanitize/<tool>.log (the sanitizer's report) and <tool>.pytest.log.
#
# PYTORCH_NO_CUDA_MEMORY_CACHING=1: every tensor is its own cudaMalloc, so memcheck sees the end
# of each one; with torch's caching allocator an overrun into a neighbouring block of the same
# cached segment would go unnoticed. Runs are 10-100x slower than plain pytest.
set -u
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
TOOLS=${TOOLS:-"memcheck racecheck"}

SANITIZER=${SANITIZER:-$(command -v compute-sanitizer || true)}
for dir in "${CUDA_HOME:-}" /usr/local/cuda; do
  if [ -z "$SANITIZER" ] && [ -n "$dir" ] && [ -x "$dir/bin/compute-sanitizer" ]; then
    SANITIZER="$dir/bin/compute-sanitizer"
  fi
done
if [ -z "$SANITIZER" ]; then
  echo "sanitize.sh: compute-sanitizer not found (not on PATH, nor in \$CUDA_HOME/bin or /usr/local/cuda/bin);" \
       "it ships with the CUDA toolkit. Set SANITIZER=/path/to/compute-sanitizer." >&2
  exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "sanitize.sh: no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False); nothing to check." >&2
  exit 2
fi
if ! "$PYTHON" -c 'import sys, torch, compress; sys.exit(0 if torch._C._dispatch_has_kernel_for_dispatch_key("compress::int8_mm", "CUDA") else 1)' 2>/dev/null; then
  echo "sanitize.sh: compress._C has no CUDA kernels (see \`$PYTHON -m compress info\`); build it with nvcc first." >&2
  exit 2
fi

if [ $# -gt 0 ]; then PYTEST_ARGS=("$@"); else PYTEST_ARGS=(-m cuda tests); fi
LOGS=build/sanitize
mkdir -p "$LOGS"
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
ERROR_EXIT=86  # the sanitizer's exit status when it found errors (distinct from pytest's 1..5)

status=0
summary=()
for tool in $TOOLS; do
  echo "== compute-sanitizer --tool $tool: pytest ${PYTEST_ARGS[*]}"
  "$SANITIZER" --tool "$tool" --error-exitcode "$ERROR_EXIT" --target-processes all --print-limit 100 \
      --log-file "$LOGS/$tool.log" \
      "$PYTHON" -m pytest -q -p no:cacheprovider "${PYTEST_ARGS[@]}" >"$LOGS/$tool.pytest.log" 2>&1
  rc=$?
  tail -n 3 "$LOGS/$tool.pytest.log"
  # One "ERROR SUMMARY: N errors" per process the sanitizer followed; add them up.
  errors=$(grep -o 'ERROR SUMMARY: [0-9]*' "$LOGS/$tool.log" 2>/dev/null | awk '{s += $3} END {print s + 0}')
  if [ "$rc" -eq "$ERROR_EXIT" ] || [ "$errors" -gt 0 ]; then
    verdict="FAIL: $errors sanitizer errors (see $LOGS/$tool.log)"
    grep -m 20 -E '^========= (Invalid|Race|Error|Uninitialized|Barrier|Program hit)' "$LOGS/$tool.log"
  elif [ "$rc" -eq 5 ]; then
    verdict="FAIL: pytest collected no tests (is this a CUDA build? see $LOGS/$tool.pytest.log)"
  elif [ "$rc" -ne 0 ]; then
    verdict="FAIL: pytest exit status $rc (see $LOGS/$tool.pytest.log)"
  elif ! grep -q 'ERROR SUMMARY' "$LOGS/$tool.log" 2>/dev/null; then
    verdict="FAIL: no sanitizer report in $LOGS/$tool.log"
  else
    verdict="ok: 0 errors"
  fi
  case "$verdict" in ok*) ;; *) status=1 ;; esac
  summary+=("$(printf '%-10s %s' "$tool" "$verdict")")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
