#!/usr/bin/env bash
# Fuzz campaign of SCAPFullyConnected against the float64 oracle and the scalar reference kernel.
#
# Runs the hypothesis property test tests/test_op_kernels.py::test_random_cases_match_oracle_and_scalar with
# CASES random cases spread evenly over the 7 weight formats (f32 f16 bf16 i8 u8 i4 u4). Every case builds a
# small model with the C++ op (random IC / OC / group size / token count / sparsity / vector or scalar
# mode+threshold / NaN+Inf inputs / bias / 1 or 2 threads), compiles it on CPU and compares each kernel ISA
# the CPU has (scalar, avx2, avx512) with the oracle and the SIMD outputs with the scalar kernel.
# In this mode a mismatch is recorded rather than stopping the run; the JSON report (cases, mismatches with the
# seed that rebuilds each one, duration, hypothesis seed, ISAs) is written to REPORT and the script exits
# non-zero if any case mismatched.
#
# Usage: scripts/fuzz.sh [CASES] [SEED]        (defaults: 10000, random; the seed is printed and recorded)
# Environment:
#   PYTHON                  interpreter with openvino, numpy, pytest, hypothesis (default: .venv/bin/python)
#   REPORT                  report path (default: benchmarks/results/fuzz_report.json)
#   SCAP_OV_EXTENSION_PATH  extension to test (default: the installed one); build_info.json must sit beside it
#   Extra arguments after CASES and SEED go to pytest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CASES="${1:-10000}"
SEED="${2:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
shift $(( $# < 2 ? $# : 2 ))
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
REPORT="${REPORT:-$ROOT/benchmarks/results/fuzz_report.json}"
N_WTYPES=7
PER_TYPE=$(( (CASES + N_WTYPES - 1) / N_WTYPES ))

echo "fuzz: $(( PER_TYPE * N_WTYPES )) cases ($PER_TYPE per weight type), hypothesis seed $SEED, report $REPORT"
echo "fuzz: extension ${SCAP_OV_EXTENSION_PATH:-<installed>}, python $PYTHON"
SCAP_OV_FUZZ_EXAMPLES="$PER_TYPE" SCAP_OV_FUZZ_REPORT="$REPORT" \
  "$PYTHON" -m pytest -q -s tests/test_op_kernels.py -k test_random_cases_match_oracle_and_scalar \
  --hypothesis-seed="$SEED" --hypothesis-show-statistics "$@"
