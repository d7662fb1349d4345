#!/usr/bin/env bash
# Fuzzing every parser that reads bytes a client, a backend or a file controls (fuzz/).
#
#   scripts/fuzz.sh smoke          each target: replay its corpus, then fuzz for 5 s (the test
#                                  command runs this)
#   scripts/fuzz.sh long [RUNS]    each target: 10,000,000 executions (or RUNS), at most an
#                                  hour; stats in fuzz/stats/<target>.log
#   scripts/fuzz.sh run TARGET ARGS...   one target, libFuzzer arguments passed on
#
# libFuzzer through cargo-fuzz, on the stable toolchain (no sanitizer: the code is safe
# Rust, and the one unsafe module, metering::segment, is not reachable from these targets).
# A crash lands in fuzz/artifacts/<target>/; copy it into fuzz/corpus/<target>/ so it is
# replayed from then on, and add a unit test beside the code it broke.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

TARGETS=(tc3 classify http1_answer http1_request billing_scanner config spool_recovery request_fields proxy_header)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi

mode=${1:-smoke}
case "$mode" in
  smoke)
    cargo fuzz build -s none >/dev/null
    for t in "${TARGETS[@]}"; do
      mkdir -p "corpus/$t"
      # Every corpus input first (the regression inputs are in there), then 5 s of new ones.
      out=$(cargo fuzz run -s none "$t" "corpus/$t" -- -runs=0 -timeout=10 2>&1 &&
        cargo fuzz run -s none "$t" "corpus/$t" -- -max_total_time=5 -timeout=10 2>&1) || {
        echo "$out" | tail -n 40
        echo "fuzz target $t failed" >&2
        exit 1
      }
      echo "$t: $(echo "$out" | grep -E '^Done' | tail -n1)"
    done
    ;;
  long)
    runs=${2:-10000000}
    mkdir -p stats
    cargo fuzz build -s none >/dev/null
    for t in "${TARGETS[@]}"; do
      mkdir -p "corpus/$t"
      start=$(date +%s)
      cargo fuzz run -s none "$t" "corpus/$t" -- -runs="$runs" -max_total_time=3600 \
        -timeout=10 -print_final_stats=1 >"stats/$t.log" 2>&1 || {
        tail -n 40 "stats/$t.log"
        echo "fuzz target $t failed" >&2
        exit 1
      }
      echo "$t: $(grep -E '^Done' "stats/$t.log" | tail -n1) ($(( $(date +%s) - start )) s), $(grep -E 'cov:' "stats/$t.log" | tail -n1 | grep -oE 'cov: [0-9]+ ft: [0-9]+')"
    done
    ;;
  run)
    shift
    t=$1
    shift
    cargo fuzz run -s none "$t" "corpus/$t" -- "$@"
    ;;
  *)
    echo "usage: scripts/fuzz.sh smoke | long [RUNS] | run TARGET [ARGS]" >&2
    exit 2
    ;;
esac
