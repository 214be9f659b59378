#!/usr/bin/env bash
# Check and measure on a GPU machine without network access (e.g. the device tool's H100/H200), in
# one command that fits a short slot: build the extension while 16 processes compile the probe's
# Triton kernels into one shared cache, then the CUDA tests in parallel, then the GPU probe
# (scripts/perf_probe.py). Results go to $OUT (default ./ek-results); per-step wall times are
# printed at the end and written to $OUT/gpu_check_times.txt. docs/gpu-probe.md explains each step.
#
#   bash scripts/gpu_check.sh                        # build warm tests probe (<= 9.5 min on an H100)
#   bash scripts/gpu_check.sh build warm probe       # only these steps
#   bash scripts/gpu_check.sh tests                  # a second call on the same warm machine
#   EK_PROBE_STEPS=top_h,ekdf bash scripts/gpu_check.sh build warm probe
#   EK_TEST_ARGS="tests/test_top_h.py" bash scripts/gpu_check.sh build tests
#   bash scripts/gpu_check.sh build bench            # entropy-kernels bench --full (EK_BENCH_OPS="entropy top_h")
#   bash scripts/gpu_check.sh build dfloat           # scripts/dfloat_report.py: EKDF size, encoder, exactness
#   bash scripts/gpu_check.sh interp                 # the interpreter tests (CPU tensors), as CI runs them
#
# Budgets (seconds): EK_GPU_CHECK_BUDGET (whole run, default 570), EK_WARM_BUDGET (120),
# EK_TEST_BUDGET (120); the probe gets what is left, less 15 s. A step past its budget is
# stopped, and says so. The tests are those marked gpu or kernels (EK_TEST_MARK= for all);
# EK_PROBE_ARGS adds arguments to the probe and the warm-up (--dry-run tries this script on a CPU).
#
# Peers (cut-cross-entropy, liger-kernel, dfloat11; verl for the policy-loss comparison tests) are
# picked up from ./.peers if present (wheels unpacked with `pip install --target .peers`); they
# are optional.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-ek-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
# one Triton cache for the warm-up, the tests and the probe: each kernel compiles once
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$PWD/.triton-cache}"
[ -d .peers ] && export PYTHONPATH="$PWD/.peers${PYTHONPATH:+:$PYTHONPATH}"

STEPS="${*:-build warm tests probe}"
want() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for s in $STEPS; do
  case "$s" in build|warm|tests|probe|interp|bench|dfloat) ;; *) echo "unknown step '$s' (build warm tests probe interp bench dfloat)" >&2; exit 2 ;; esac
done

BUDGET="${EK_GPU_CHECK_BUDGET:-570}"
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
cap() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }  # min(budget, time left)
TIMES="$OUT/gpu_check_times.txt"
: >"$TIMES"
record() { printf '%-8s %5ss  %s\n' "$1" "$2" "$3" | tee -a "$TIMES"; }
status=0
step() { echo; echo "=== $* ($(left) s left) ==="; }

build_pid="" warm_pid=""
if want build; then
  step "build (EK_CUDA_ARCHS=${EK_CUDA_ARCHS:-90}, offline, in place)"
  t0=$(date +%s)
  ( EK_CUDA_ARCHS="${EK_CUDA_ARCHS:-90}" "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 ) &
  build_pid=$!
fi
if want warm; then
  step "warm: compile the probe's Triton kernels, ${EK_WARM_JOBS:-16} processes"
  tw=$(date +%s)
  wb=$(cap "${EK_WARM_BUDGET:-120}")
  # from the source tree (perf_probe.py puts it first on sys.path): the build may still be running
  # shellcheck disable=SC2086
  ( "$PY" scripts/perf_probe.py --warm --jobs "${EK_WARM_JOBS:-16}" --deadline "$wb" --out "$OUT" \
      ${EK_PROBE_STEPS:+--steps "$EK_PROBE_STEPS"} ${EK_PROBE_ARGS:-} >"$OUT/warm.log" 2>&1 ) &
  warm_pid=$!
fi
if [ -n "$build_pid" ]; then
  if wait "$build_pid"; then
    record build $(( $(date +%s) - t0 )) "ok"
  else
    record build $(( $(date +%s) - t0 )) "FAILED (tail of $OUT/build.log below)"
    tail -50 "$OUT/build.log"
    [ -n "$warm_pid" ] && kill "$warm_pid" 2>/dev/null
    exit 1
  fi
  "$PY" -c "import entropy_kernels._C" || exit 1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null | tee "$OUT/gpu.txt"
  entropy-kernels info | tee -a "$OUT/gpu.txt"
fi
if [ -n "$warm_pid" ]; then
  wait "$warm_pid"
  rc=$?
  record warm $(( $(date +%s) - tw )) "$(tail -1 "$OUT/warm.log")"
  [ "$rc" -eq 0 ] || echo "warm-up incomplete (rc $rc): the tests and the probe compile what is missing"
fi

if want tests; then
  tb=$(cap "${EK_TEST_BUDGET:-120}")
  step "CUDA tests (budget $tb s)"
  t0=$(date +%s)
  par=""
  "$PY" -c "import xdist" 2>/dev/null && par="-n ${EK_TEST_JOBS:-8}"
  mark="${EK_TEST_MARK-gpu or kernels}"  # EK_TEST_MARK= (empty): the whole suite
  # shellcheck disable=SC2086
  TRITON_INTERPRET=0 EK_EXPECT_CUDA_BUILD=1 timeout -k 15 -s INT "$tb" \
    "$PY" -m pytest ${EK_TEST_ARGS:-tests} ${mark:+-m "$mark"} $par -q -rs \
    -p no:cacheprovider --durations=10 >"$OUT/tests-cuda.log" 2>&1
  rc=$?
  tail -30 "$OUT/tests-cuda.log"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ] || [ "$rc" -eq 137 ]; then
    record tests $(( $(date +%s) - t0 )) "CUT at its budget of $tb s (partial log: $OUT/tests-cuda.log)"; status=1
  else
    record tests $(( $(date +%s) - t0 )) "$(grep -E '(passed|failed|error)' "$OUT/tests-cuda.log" | tail -1)"
    [ "$rc" -eq 0 ] || status=1
  fi
fi

if want probe; then
  pb=$(( $(left) - 15 ))
  step "GPU probe (deadline $pb s)"
  t0=$(date +%s)
  if [ "$pb" -lt 30 ]; then
    record probe 0 "SKIPPED: no time left"
    status=1
  else
    # shellcheck disable=SC2086
    "$PY" scripts/perf_probe.py --out "$OUT" --deadline "$pb" ${EK_PROBE_STEPS:+--steps "$EK_PROBE_STEPS"} ${EK_PROBE_ARGS:-} 2>&1 \
      | tee "$OUT/probe.log" | grep -v '^\[probe\]' | tail -85
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then note="ok"; elif [ "$rc" -eq 1 ]; then note="a correctness check FAILED"; else note="rc $rc"; fi
    record probe $(( $(date +%s) - t0 )) "$note (summary above; $OUT/*_probe.md)"
    [ "$rc" -eq 0 ] || status=1
  fi
fi

if want interp; then
  step "Triton kernels under the interpreter (CPU tensors)"
  t0=$(date +%s)
  TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES= "$PY" -m pytest tests -q -m "interpreter or kernels" -p no:cacheprovider \
    ${EK_TEST_JOBS:+-n "$EK_TEST_JOBS"} >"$OUT/tests-interpreter.log" 2>&1 || status=1
  record interp $(( $(date +%s) - t0 )) "$(tail -1 "$OUT/tests-interpreter.log")"
fi

if want dfloat; then
  step "EKDF: size vs bound and dfloat11, encoder/decoder throughput, exactness on structured inputs"
  t0=$(date +%s)
  "$PY" scripts/dfloat_report.py --out "$OUT" >"$OUT/dfloat.log" 2>&1 || status=1
  record dfloat $(( $(date +%s) - t0 )) "$(tail -1 "$OUT/dfloat.log")"
fi

if want bench; then
  step "benchmarks (--full)"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  entropy-kernels bench --full -v --out "$OUT" ${EK_BENCH_OPS:+--ops $EK_BENCH_OPS} >"$OUT/bench.log" 2>&1 || status=1
  tail -40 "$OUT/bench.log"
  record bench $(( $(date +%s) - t0 )) "see $OUT/bench.log"
fi

echo
echo "=== wall time per step ($(( $(date +%s) - START )) s in all) ==="
cat "$TIMES"
echo "results in $OUT: commit the *_probe.{json,md} / *_full.{json,md} to benchmarks/results/ and run"
echo "python scripts/regen_bench_docs.py (docs/gpu-probe.md)"
exit $status
