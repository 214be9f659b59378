#!/usr/bin/env bash
# Full check on a GPU machine without network access (e.g. the device tool's H100/H200):
# builds in place, runs the whole test-suite on CUDA, the Triton-interpreter tests, and the
# --full benchmarks, and leaves the results in $OUT (default: ./ek-results).
#
#   bash scripts/gpu_check.sh                     # everything
#   bash scripts/gpu_check.sh build tests         # only these steps (build, tests, interp, bench)
#   EK_BENCH_OPS="entropy top_h" bash scripts/gpu_check.sh build bench
#   EK_TEST_ARGS="tests/test_dfloat.py" bash scripts/gpu_check.sh build tests
#   bash scripts/gpu_check.sh build dfloat             # scripts/dfloat_report.py
#   bash scripts/gpu_check.sh build profile            # scripts/gpu_profile.py: host vs kernel time
#
# It leaves at most 8 files in $OUT (the device tool returns up to 8).
#
# Peers (cut-cross-entropy, liger-kernel, dfloat11; verl for the policy-loss comparison tests) are
# picked up from ./.peers if present
# (wheels unpacked with `pip install --target .peers`); they are optional.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-ek-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
[ -d .peers ] && export PYTHONPATH="$PWD/.peers${PYTHONPATH:+:$PYTHONPATH}"

STEPS="${*:-build tests interp dfloat bench}"
want() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
status=0
step() { echo; echo "=== $* ==="; }

if want build; then
  step "build (offline, in place)"
  "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
  "$PY" -c "import entropy_kernels._C" || exit 1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null | tee "$OUT/gpu.txt"
  entropy-kernels info | tee -a "$OUT/gpu.txt"
fi

if want tests; then
  step "tests on CUDA"
  TRITON_INTERPRET=0 EK_EXPECT_CUDA_BUILD=1 "$PY" -m pytest ${EK_TEST_ARGS:-tests} -q -rs -p no:cacheprovider --durations=10 2>&1 | tee "$OUT/tests-cuda.log" | tail -30
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if want interp; then
  step "Triton kernels under the interpreter (CPU tensors)"
  TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES= "$PY" -m pytest tests -q -m "interpreter or kernels" -p no:cacheprovider 2>&1 | tee "$OUT/tests-interpreter.log" | tail -5
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if want dfloat; then
  step "EKDF: size vs bound and dfloat11, encoder/decoder throughput, GPU decode bandwidth"
  "$PY" scripts/dfloat_report.py --out "$OUT" 2>&1 | tee "$OUT/dfloat.log" | tail -60
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if want profile; then
  step "profile: host vs device time of the slow ops"
  "$PY" scripts/gpu_profile.py --out "$OUT" 2>&1 | tee "$OUT/profile.log" | tail -20
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if want bench; then
  step "benchmarks (--full)"
  # shellcheck disable=SC2086
  entropy-kernels bench --full -v --out "$OUT" ${EK_BENCH_OPS:+--ops $EK_BENCH_OPS} 2>&1 | tee "$OUT/bench.log" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

echo; echo "results in $OUT (copy the *_full.json/.md into benchmarks/results/ and commit them)"
exit $status
