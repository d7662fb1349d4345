#!/usr/bin/env bash
# OLD (4c5dfd3) vs NEW (main HEAD) Tollgate gateway: interleaved load runs + callgrind.
# Everything lives under $CMP (default /tmp/cmp); this repository is only cloned from.
# Figures: loadtest/RESULTS.md "Before and after the workspace split".
#
#   /tmp/cmp/run.sh                 # clone+build (if missing), bench, callgrind, summary
#   STEPS="bench summary" ROUNDS=7 /tmp/cmp/run.sh
set -euo pipefail
CMP=${CMP:-/tmp/cmp}
REPO=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
HERE=$(cd "$(dirname "$0")" && pwd)
OLD_SHA=4c5dfd3
NEW_SHA=${NEW_SHA:-1501b7adaacc465cf03785264cbfdb66c93378f8}   # main when measured (after the split)
STEPS=${STEPS:-"build bench callgrind summary"}
ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}        # admitted: 8 keys x 8; overload: 32 keys x 2
CG_RATE=${CG_RATE:-250}               # callgrind: open loop 250/s x 20 s = 5000 calls, 4 connections
CG_SECS=${CG_SECS:-20}
CG_CONNS=${CG_CONNS:-4}
OUT=${OUT:-$CMP/results}

OLD_BIN=$CMP/old/target/release/tollgate
NEW_BIN=$CMP/new/target/release/tollgate
STUB_BIN=$NEW_BIN                                   # the same stub for both sides
LOADTEST=$CMP/new/loadtest/target/release/tollgate-loadtest   # the same generator for both sides

has() { [[ " $STEPS " == *" $1 "* ]]; }

if has build; then
  [ -d $CMP/old ] || { git clone -q "$REPO" $CMP/old && git -C $CMP/old checkout -q $OLD_SHA; }
  [ -d $CMP/new ] || { git clone -q "$REPO" $CMP/new && git -C $CMP/new checkout -q $NEW_SHA; }
  (cd $CMP/old && nice -n 5 cargo build --release)
  (cd $CMP/new && nice -n 5 cargo build --release)
  (cd $CMP/new/loadtest && nice -n 5 cargo build --release)
fi

. $CMP/new/loadtest/lib.sh      # port, wait_port, open_accounts, credentials, segment_streams
mkdir -p "$OUT"
CONF=$OUT/config
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# ---- shared config (identical for OLD and NEW: both parse every key used here) -------------
mkdir -p "$CONF"
cp $CMP/new/config/catalog.toml "$CONF/"   # differs from OLD's only in comments
LIMITED=$((CONNECTIONS / 2))
{
  open_accounts 8 200000000000 open '["bda", "ocr"]'
  for i in $(seq 1 $LIMITED); do
    printf '[[account]]\nuin = %d\nname = "limited-%d"\nservices = ["ocr"]\npostpaid = true\n\n' $((300000000000 + i)) "$i"
  done
} > "$CONF/entitlements.toml"
{
  credentials 8 200000000000 AKIDsbsOpen side-by-side-open-key-
  credentials $LIMITED 300000000000 AKIDsbsLimited side-by-side-limited-key-
} > "$CONF/credentials.toml"
# The load tool reads the limits from a tollgate.toml in --config-dir (ports there are unused).
gw_toml() { # api admin stub dir [extra]
  cat <<TOML
[listen]
api = "127.0.0.1:$1"
admin = "127.0.0.1:$2"
[files]
catalog = "$CONF/catalog.toml"
entitlements = "$CONF/entitlements.toml"
credentials = "$CONF/credentials.toml"
[upstream.default]
url = "http://127.0.0.1:$3"
[proxy]
pool_max_idle_per_host = 1024
[metering]
sink = "spool"
gateway_id = "gw-cmp"
spool_dir = "$4/spool"
batch_dir = "$4/batches"
[log]
level = "warn"
${5:-}
TOML
}
gw_toml 1 2 3 "$OUT/unused" > "$CONF/tollgate.toml"
{
  printf 'name = "admitted"\ndescription = "every call admitted"\nduration_secs = %s\n\n' "$DURATION"
  segment_streams 8 open AKIDsbsOpen $((CONNECTIONS / 8))
} > "$OUT/admitted.toml"
{
  printf 'name = "overload"\ndescription = "%d keys at the 20 QPS default, closed loop"\nduration_secs = %s\n\n' $LIMITED "$DURATION"
  for i in $(seq 1 $LIMITED); do
    printf '[[stream]]\nname = "limited-%d"\nsecret_id = "AKIDsbsLimited%03d"\nservice = "ocr"\naction = "GeneralBasicOCR"\nmode = "closed"\nconcurrency = 2\n\n' "$i" "$i"
  done
} > "$OUT/overload.toml"
{
  printf 'name = "cg"\ndescription = "fixed count of admitted calls, open loop"\nduration_secs = %s\nrate = %s\n\n' "$CG_SECS" "$CG_RATE"
  printf '[[stream]]\nname = "open-1"\nsecret_id = "AKIDsbsOpen001"\nservice = "bda"\naction = "SegmentPortraitPic"\nweight = 1\n[stream.headers]\nX-Stub-Image-Bytes = "0"\n\n'
} > "$OUT/cg.toml"
{ # the same fixed count, on one key at the 20 QPS default: ~95 % refused by admission
  printf 'name = "cgover"\ndescription = "fixed count over quota, open loop"\nduration_secs = %s\nrate = %s\n\n' "$CG_SECS" "$CG_RATE"
  printf '[[stream]]\nname = "limited-1"\nsecret_id = "AKIDsbsLimited001"\nservice = "ocr"\naction = "GeneralBasicOCR"\nweight = 1\n\n'
} > "$OUT/cgover.toml"

busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }   # all non-idle jiffies, all CPUs
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }   # utime+stime of the whole process (all threads)
wait_long() { for _ in $(seq 1 1200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open"; exit 1; }
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Waits (at most QUIET_MAX s) until the machine is idle: < 0.15 cores busy over 2 s, so a run
# does not start inside someone else's build or benchmark. Prints the seconds waited.
QUIET_MAX=${QUIET_MAX:-240}
wait_quiet() {
  local t0=$SECONDS a b
  while [ $((SECONDS - t0)) -lt "$QUIET_MAX" ]; do
    a=$(busy); sleep 2; b=$(busy)
    [ $(( (b - a) * 100 / (2 * $(getconf CLK_TCK)) )) -lt 15 ] && break
  done
  echo $((SECONDS - t0))
}

one_run() { # label side scenario
  local label=$1 side=$2 scen=$3 bin dir stub api admin spid gpid g0 g1 s0 s1
  [ "$side" = old ] && bin=$OLD_BIN || bin=$NEW_BIN
  dir=$OUT/runs/$label; rm -rf "$dir"; mkdir -p "$dir"
  wait_quiet > "$dir/waited-secs"
  stub=$(port); api=$(port); admin=$(port)
  gw_toml "$api" "$admin" "$stub" "$dir" > "$dir/tollgate.toml"
  "$STUB_BIN" stub --listen "127.0.0.1:$stub" >"$dir/stub.log" 2>&1 & spid=$!; PIDS+=($spid)
  wait_port "$stub"
  "$bin" gateway --config "$dir/tollgate.toml" >"$dir/gateway.log" 2>&1 & gpid=$!; PIDS+=($gpid)
  wait_port "$api"; sleep 0.5
  { date -u +%T; cat /proc/loadavg; ps -eo pid,ni,pcpu,etime,comm --sort=-pcpu | head -6; } > "$dir/machine-before.txt"
  g0=$(ticks $gpid); s0=$(ticks $spid); m0=$(busy)
  /usr/bin/time -f "%e %U %S" -o "$dir/loadtest.time" \
  "$LOADTEST" --scenario "$OUT/$scen.toml" --target "127.0.0.1:$api" --config-dir "$CONF" \
    --quiet --report-json "$dir/report.json" > "$dir/report.txt" 2>&1 || true
  g1=$(ticks $gpid); s1=$(ticks $spid); m1=$(busy)
  # machine-wide busy jiffies during the run, to tell how much CPU others took (see summarize.py)
  echo "$((m1 - m0))" > "$dir/machine-busy"
  { date -u +%T; cat /proc/loadavg; ps -eo pid,ni,pcpu,etime,comm --sort=-pcpu | head -6; } > "$dir/machine-after.txt"
  echo "$((g1 - g0)) $((s1 - s0)) $(getconf CLK_TCK)" > "$dir/cpu"
  stop $gpid; stop $spid
  echo "$(date -u +%T) $label $side $scen done ($(python3 -c "import json;t=json.load(open('$dir/report.json'))['totals'];print(t['sent'],'calls')" 2>/dev/null || echo no report))"
}

if has bench; then
  echo "== bench: $ROUNDS rounds x {admitted, overload} x {old,new}, ${DURATION}s, $CONNECTIONS connections"
  for r in $(seq 1 "$ROUNDS"); do
    for scen in admitted overload; do
      # interleaved; the side that goes first alternates every round (ABBA) against drift
      if [ $((r % 2)) = 1 ]; then order="old new"; else order="new old"; fi
      for side in $order; do one_run "$scen-$side-r$r" "$side" "$scen"; done
    done
  done
fi

cg_run() { # label bin mode(idle|load)
  local label=$1 bin=$2 mode=$3 dir stub api admin spid gpid
  dir=$OUT/cg/$label; rm -rf "$dir"; mkdir -p "$dir"
  stub=$(port); api=$(port); admin=$(port)
  # reload polling stretched so the wall time under valgrind adds (almost) no instructions
  gw_toml "$api" "$admin" "$stub" "$dir" $'[reload]\npoll_interval_ms = 3600000' > "$dir/tollgate.toml"
  "$STUB_BIN" stub --listen "127.0.0.1:$stub" >"$dir/stub.log" 2>&1 & spid=$!; PIDS+=($spid)
  wait_port "$stub"
  valgrind --tool=callgrind --collect-atstart=yes --callgrind-out-file="$dir/callgrind.out" \
    "$bin" gateway --config "$dir/tollgate.toml" >"$dir/gateway.log" 2>&1 & gpid=$!; PIDS+=($gpid)
  wait_long "$api"; sleep 1
  case $mode in
    load) "$LOADTEST" --scenario "$OUT/cg.toml" --target "127.0.0.1:$api" --config-dir "$CONF" \
            --connections "$CG_CONNS" --quiet --report-json "$dir/report.json" > "$dir/report.txt" 2>&1 || true ;;
    over) "$LOADTEST" --scenario "$OUT/cgover.toml" --target "127.0.0.1:$api" --config-dir "$CONF" \
            --connections "$CG_CONNS" --quiet --report-json "$dir/report.json" > "$dir/report.txt" 2>&1 || true ;;
    idle) sleep "$CG_SECS" ;;
    start) ;;
  esac
  sleep 1
  stop $gpid; stop $spid
  echo "$(date -u +%T) callgrind $label: $(grep -E '^(summary|totals):' "$dir/callgrind.out" | head -1)"
}

if has callgrind; then
  echo "== callgrind"
  for side in old new; do
    [ "$side" = old ] && bin=$OLD_BIN || bin=$NEW_BIN
    for rep in 1 2; do
      for mode in start idle load over; do cg_run "$side-$mode-$rep" "$bin" "$mode"; done
    done
  done
fi

if has summary; then
  python3 "$HERE/split-summarize.py" "$OUT" | tee "$OUT/summary.txt"
fi
