#!/usr/bin/env bash
# Build the CPU extension with AddressSanitizer + UndefinedBehaviorSanitizer and run the op tests against it.
#
# The build goes to its own directory (CMake option SCAP_OV_SANITIZE=ON, RelWithDebInfo, -O1 -g); the normal
# and packaged builds are untouched. The op tests then run in a Python process that loads the sanitized
# library through SCAP_OV_EXTENSION_PATH, once with SCAP_OV_ISA=reference (the scalar kernel everywhere) and
# once with the default (best) ISA, followed by a sanitized fuzz run. Any ASan or UBSan report aborts the
# Python process, which fails pytest and this script.
#
# Usage: scripts/sanitize.sh [extra pytest args]
# Environment:
#   BUILD_DIR    sanitized build directory (default /tmp/scap-ov-asan)
#   PYTHON       interpreter with openvino, numpy, pytest, hypothesis, nncf (default: .venv/bin/python)
#   JOBS         build parallelism (default 2)
#   FUZZ_CASES   cases of the sanitized fuzz run (scripts/fuzz.sh under ASan; default 1000, 0 = skip)
#   TESTS        test files (default: op kernels, packing, validation, concurrency)
#   SKIP_BUILD=1 reuse an existing build in BUILD_DIR
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_DIR="${BUILD_DIR:-/tmp/scap-ov-asan}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
JOBS="${JOBS:-2}"
FUZZ_CASES="${FUZZ_CASES:-1000}"
TESTS="${TESTS:-tests/test_op_kernels.py tests/test_op_packing.py tests/test_op_validation.py tests/test_concurrency.py}"
LIB="$BUILD_DIR/plugins/cpu/libscap_ov_cpu_extension.so"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython3_EXECUTABLE="$PYTHON" \
    -DSCAP_OV_SANITIZE=ON
  cmake --build "$BUILD_DIR" -j"$JOBS"
fi
# scap_ov.extension reads the OpenVINO release the library was built for from build_info.json beside it.
cp "$BUILD_DIR/build_info.json" "$BUILD_DIR/plugins/cpu/build_info.json"
# (not `ldd | grep -q`: grep -q exits at the first match, ldd may then die of SIGPIPE, and pipefail fails the test)
if ! grep -q libasan <<< "$(ldd "$LIB")"; then
  echo "sanitize: $LIB is not linked against libasan (configured without SCAP_OV_SANITIZE=ON?)" >&2
  exit 1
fi

# Python and OpenVINO are not instrumented, so the ASan runtime must be the first library in the process
# (it replaces malloc / free / new / delete for everyone): preload it, and UBSan's runtime with it.
CXX_COMPILER="$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$BUILD_DIR/CMakeCache.txt")"
ASAN_RT="$("${CXX_COMPILER:-g++}" -print-file-name=libasan.so)"
UBSAN_RT="$("${CXX_COMPILER:-g++}" -print-file-name=libubsan.so)"
for rt in "$ASAN_RT" "$UBSAN_RT"; do
  [[ -e "$rt" ]] || { echo "sanitize: sanitizer runtime $rt not found" >&2; exit 1; }
done

# ASAN_OPTIONS:
#   detect_leaks=0      LeakSanitizer would report the interpreter's and OpenVINO's deliberate at-exit
#                       "leaks" (interned objects, plugin singletons, TBB arenas): noise, none of it ours.
#   abort_on_error=1    abort (SIGABRT) on the first report instead of _exit(1): pytest cannot swallow it and
#                       Python's faulthandler prints which test was running.
#   halt_on_error=1     (the default without -fsanitize-recover=address; explicit for clarity)
#   suppressions=...    see scripts/asan.supp (third-party reports only)
# TBB_ENABLE_SANITIZERS=1: oneTBB (OpenVINO's threading runtime) dlopens its libtbbbind with RTLD_DEEPBIND,
#   which the ASan runtime refuses (it aborts: "You are trying to dlopen ... with RTLD_DEEPBIND flag which is
#   incompatible with sanitizer runtime", google/sanitizers#611). This documented oneTBB switch drops only that
#   flag; nothing else in TBB or OpenVINO changes.
# UBSAN_OPTIONS: a stack trace for each report, and stop at the first one (the library is also built with
#   -fno-sanitize-recover=undefined, so any UB report is fatal).
SAN_ENV=(
  LD_PRELOAD="$ASAN_RT:$UBSAN_RT"
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:suppressions=$ROOT/scripts/asan.supp"
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  TBB_ENABLE_SANITIZERS=1
  SCAP_OV_EXTENSION_PATH="$LIB"
  PYTHONFAULTHANDLER=1
)

# --capture=sys: pytest captures Python-level output only, so a sanitizer report (written by the runtime to
# file descriptor 2) reaches the terminal even though the process aborts before pytest could print it.
PYTEST=(-m pytest -q --capture=sys -p no:cacheprovider)

run() {  # run ISA_LABEL pytest-args...
  local isa="$1"; shift
  echo "=== sanitize: SCAP_OV_ISA=${isa:-<default>} $*"
  if [[ -n "$isa" ]]; then
    env "${SAN_ENV[@]}" SCAP_OV_ISA="$isa" "$PYTHON" "${PYTEST[@]}" "$@"
  else
    env -u SCAP_OV_ISA "${SAN_ENV[@]}" "$PYTHON" "${PYTEST[@]}" "$@"
  fi
}

t0=$SECONDS
# shellcheck disable=SC2086  # TESTS is a whitespace-separated list of paths
run reference $TESTS "$@"
# shellcheck disable=SC2086
run "" $TESTS "$@"
if (( FUZZ_CASES > 0 )); then
  # the fuzz test sets SCAP_OV_ISA itself per run and compares every ISA the CPU has, so one run covers both
  per_type=$(( (FUZZ_CASES + 6) / 7 ))
  seed="$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')"
  echo "=== sanitize: fuzz $(( per_type * 7 )) cases under ASan, hypothesis seed $seed"
  env "${SAN_ENV[@]}" SCAP_OV_FUZZ_EXAMPLES="$per_type" \
    SCAP_OV_FUZZ_REPORT="$ROOT/benchmarks/results/fuzz_report_asan.json" \
    "$PYTHON" "${PYTEST[@]}" -s tests/test_op_kernels.py -k test_random_cases_match_oracle_and_scalar \
    --hypothesis-seed="$seed"
fi
echo "sanitize: clean (ASan + UBSan, $(( SECONDS - t0 )) s of tests)"
