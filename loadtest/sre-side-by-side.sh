#!/usr/bin/env bash
# The side-by-side an SRE would run (issue 15): a load generator that is not ours (wrk, with a
# Lua script of pre-signed TC3 calls, loadtest/tls/tc3_sign.py), two backends (the project's
# stub, and nginx answering `return 200` with a vendor-shaped JSON body), and the peers:
#   tollgate    verifies every signature, admits, meters every call durably (the spool);
#   nginx       limit_req keyed per credential and action (the key Tollgate quotas by);
#   haproxy     a stick-table with http_req_rate per credential and action;
#   pass        nginx proxying with no admission;
#   direct      the backend called directly (the ceiling).
# Two modes: admitted (8 keys, quotas far above the load) and overload (50 keys at 20 calls/s
# each, offered at wrk's full speed: far beyond 10x). Per run: requests/s, p99, and the proxy's
# user and system CPU per call (from /proc, the process and its children). Rounds interleave
# the targets (the order rotates); the summary gives medians and the ratios against the best
# of nginx and HAProxy.
#
# BEFORE=/path/to/an/older/tollgate adds it as one more target ("before", same config), so a
# change is measured against what it replaced in the same interleaved run.
#
# Two load generators drive every target: wrk (not the project's), and the project's own tool
# (loadtest/, which signs every call itself). GENERATORS="wrk own" by default.
#
#   loadtest/sre-side-by-side.sh        # DURATION=8 ROUNDS=3 CONNECTIONS=64 GENERATORS="wrk own"
#
# MODES="admitted", BACKENDS="nginx", TARGETS="tollgate nginx before" run a subset (a quick
# look while changing the gateway); a figure for RESULTS.md comes from the full run.
# PERFSTAT=1 counts each target's context switches and system calls per call (perf stat);
# PROFILE=dir records profiles of the Tollgate targets (both described further down).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
GENERATORS=${GENERATORS:-wrk own}
# Subsets, for a quick look while changing the gateway (the defaults run everything):
MODES=${MODES:-admitted overload}
BACKENDS=${BACKENDS:-stub nginx}
TARGETS=${TARGETS:-}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
HAPROXY=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}
for t in "$NGINX" "$HAPROXY" "$(command -v wrk)"; do
  [ -x "$t" ] || { echo "needs nginx, haproxy and wrk (apt-get install nginx-light haproxy wrk)"; exit 1; }
done
if [ -n "${PERFSTAT:-}" ] && ! command -v perf >/dev/null; then
  echo "PERFSTAT needs perf (apt-get install linux-perf)"; exit 1
fi
echo "== building (release)"
cargo build --release -q
cargo build --release -q --manifest-path loadtest/Cargo.toml
TOLLGATE=$ROOT/target/release/tollgate
LOADTEST=$ROOT/loadtest/target/release/tollgate-loadtest

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$WORK"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
. loadtest/lib.sh

echo "== config in $WORK"
mkdir -p "$WORK/config"
cp config/catalog.toml "$WORK/config/"
{
  open_accounts 8 200000000000 open '["bda", "ocr"]'
  for i in $(seq 1 50); do
    printf '[[account]]\nuin = %d\nname = "limited-%d"\nservices = ["ocr"]\npostpaid = true\n\n' $((300000000000 + i)) "$i"
  done
} > "$WORK/config/entitlements.toml"
{
  credentials 8 200000000000 AKIDsreOpen sre-open-key-
  credentials 50 300000000000 AKIDsreLimited sre-limited-key-
} > "$WORK/config/credentials.toml"

# The project's tool: the same keys and calls as wrk's (its scenarios sign them itself).
{
  printf 'name = "admitted"\nduration_secs = %s\n\n' "$DURATION"
  segment_streams 8 open AKIDsreOpen $((CONNECTIONS / 8))
} > "$WORK/own-admitted.toml"
{
  printf 'name = "overload"\nduration_secs = %s\n\n' "$DURATION"
  limited_streams 50 AKIDsreLimited "$CONNECTIONS"
} > "$WORK/own-overload.toml"

declare -A PORT PID
start_nginx() { # name template backend-port rate limit-directive
  local name=$1 port; port=$(port)
  sed -e "s|@DIR@|$WORK|g" -e "s|@NAME@|$name|g" -e "s|@RATE@|$4|g" -e "s|@LIMIT@|$5|g" \
      -e "s|@PORT@|$port|g" -e "s|@STUB@|$3|g" -e "s|@MODE@|$name|g" "$2" > "$WORK/nginx-$name.conf"
  mkdir -p "$WORK/body-$name" "$WORK/proxy-$name"
  "$NGINX" -c "$WORK/nginx-$name.conf" -p "$WORK" -q
  wait_port "$port"; PORT[$name]=$port; PID[$name]=$(cat "$WORK/nginx-$name.pid")
}
start_haproxy() { # name backend-port rate
  local name=$1 port; port=$(port)
  sed -e "s|@DIR@|$WORK|g" -e "s|@NAME@|$name|g" -e "s|@RATE@|$3|g" -e "s|@PORT@|$port|g" \
      -e "s|@BACKEND@|$2|g" loadtest/sre/haproxy.cfg.template > "$WORK/haproxy-$name.cfg"
  "$HAPROXY" -f "$WORK/haproxy-$name.cfg" -D -q
  wait_port "$port"; PORT[$name]=$port; PID[$name]=$(cat "$WORK/haproxy-$name.pid")
}
start_tollgate() { # name backend-port [binary]
  local name=$1 port admin bin=${3:-$TOLLGATE}; port=$(port); admin=$(port)
  cat > "$WORK/config/tollgate-$name.toml" <<TOML
[listen]
api = "127.0.0.1:$port"
admin = "127.0.0.1:$admin"
[files]
catalog = "catalog.toml"
entitlements = "entitlements.toml"
credentials = "credentials.toml"
[upstream.default]
url = "http://127.0.0.1:$2"
[proxy]
pool_max_idle_per_host = 1024
[metering]
sink = "spool"
gateway_id = "gw-sre-$name"
spool_dir = "$WORK/spool-$name"
batch_dir = "$WORK/batches-$name"
[log]
level = "warn"
TOML
  "$bin" gateway --config "$WORK/config/tollgate-$name.toml" >"$WORK/gateway-$name.log" 2>&1 &
  PID[$name]=$!; PIDS+=($!); wait_port "$port"; PORT[$name]=$port
}

echo "== backends: the stub, and nginx return 200"
STUB=$(port)
"$TOLLGATE" stub --listen "127.0.0.1:$STUB" >"$WORK/stub.log" 2>&1 & PID[direct-stub]=$!; PIDS+=($!)
wait_port "$STUB"; PORT[direct-stub]=$STUB
NB=$(port)
sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|$NB|g" loadtest/sre/backend-nginx.conf.template > "$WORK/nginx-backend.conf"
mkdir -p "$WORK/body-backend"
"$NGINX" -c "$WORK/nginx-backend.conf" -p "$WORK" -q
wait_port "$NB"; PORT[direct-nginx]=$NB; PID[direct-nginx]=$(cat "$WORK/nginx-backend.pid")

echo "== peers, per backend"
for b in stub nginx; do
  bp=${PORT[direct-$b]}
  start_tollgate "tollgate-$b" "$bp"
  [ -n "${BEFORE:-}" ] && start_tollgate "before-$b" "$bp" "$BEFORE"
  start_nginx "nginx-admitted-$b" loadtest/side-by-side/nginx.conf.template "$bp" "1000000r/s" "limit_req zone=api burst=1000000 nodelay;"
  start_nginx "nginx-overload-$b" loadtest/side-by-side/nginx.conf.template "$bp" "20r/s" "limit_req zone=api burst=20 nodelay;"
  start_nginx "pass-$b" loadtest/side-by-side/nginx.conf.template "$bp" "1r/s" ""
  start_haproxy "haproxy-admitted-$b" "$bp" 1000000
  start_haproxy "haproxy-overload-$b" "$bp" 20
done

ticks() { # user system ticks of a process and its children
  local u=0 s=0 p
  for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
    if [ -r "/proc/$p/stat" ]; then
      read -r pu ps < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + pu)); s=$((s + ps))
    fi
  done
  echo "$u $s"
}

# PERFSTAT=1: `perf stat` attached to the target (the process and its children, every
# thread) for each run: context switches, epoll_wait calls and system calls per call, the
# wake-up pattern behind a rate (RESULTS.md). The tracepoints cost every target some CPU:
# take rates from a run without it.
perf_start() { # pid
  PERF_PID=""
  # (Not for the PROFILE runs: they are not counted, and perf record is attached then.)
  [ -n "${PERFSTAT:-}" ] && [ -z "${RESULTS_FILE:-}" ] || return 0
  local pids; pids=$(echo "$1" $(pgrep -P "$1" 2>/dev/null) | tr ' ' ',')
  perf stat -x, -o "$WORK/perfstat.out" -e context-switches,syscalls:sys_enter_epoll_wait,raw_syscalls:sys_enter \
    -p "$pids" >/dev/null 2>&1 &
  PERF_PID=$!
  sleep 0.3
}
perf_stop() { # generator mode backend target calls
  [ -n "${PERF_PID:-}" ] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true
  # perf stat -x, lines: value,unit,event,...; the three counts in the order of -e.
  local counts
  counts=$(awk -F, '$3 == "context-switches" {c = $1} $3 == "syscalls:sys_enter_epoll_wait" {e = $1}
    $3 == "raw_syscalls:sys_enter" {s = $1} END {print c + 0, e + 0, s + 0}' "$WORK/perfstat.out" 2>/dev/null || echo "0 0 0")
  echo "$1 $2 $3 $4 $5 $counts" >> "$WORK/perfstat.txt"
}

run() { # generator mode backend target
  local gen=$1; shift
  local mode=$1 b=$2 t=$3 key port pid
  case $t in
    tollgate) key="tollgate-$b" ;; before) key="before-$b" ;; nginx|haproxy) key="$t-$mode-$b" ;; pass) key="pass-$b" ;; direct) key="direct-$b" ;;
  esac
  port=${PORT[$key]}; pid=${PID[$key]}
  if [ "$gen" = own ]; then
    read -r u0 s0 < <(ticks "$pid")
    perf_start "$pid"
    "$LOADTEST" --scenario "$WORK/own-$mode.toml" --target "127.0.0.1:$port" --config-dir "$WORK/config" \
      --quiet --report-json "$WORK/own.json" > "$WORK/own.txt" 2>&1 || true
    read -r u1 s1 < <(ticks "$pid")
    read -r rps total p99 < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1])); t = r["totals"]
window = r["send_window_secs"] or r["duration_secs"]
answered = t["sent"] - t["transport_errors"]
print("%.2f %d %.2fms" % (answered / window, max(answered, 1), t["latency"]["all"]["p99_ms"]))' "$WORK/own.json")
    perf_stop own "$mode" "$b" "$t" "$total"
    echo "own $mode $b $t $rps $total $p99 $((u1 - u0)) $((s1 - s0)) $(getconf CLK_TCK)" >> "$WORK/${RESULTS_FILE:-results.txt}"
    printf '   %-4s %-9s %-6s %-9s %10s req/s  p99 %-8s  user %5d  sys %5d ticks\n' own "$mode" "$b" "$t" "$rps" "$p99" $((u1 - u0)) $((s1 - s0))
    return
  fi
  local sig="$WORK/sig-$mode-$b-$t"
  if [ "$mode" = admitted ]; then
    python3 loadtest/tls/tc3_sign.py "127.0.0.1:$port" 8 AKIDsreOpen sre-open-key- "$sig"
  else
    TC3_SERVICE=ocr TC3_ACTION=GeneralBasicOCR TC3_VERSION=2018-11-19 \
      python3 loadtest/tls/tc3_sign.py "127.0.0.1:$port" 50 AKIDsreLimited sre-limited-key- "$sig"
  fi
  read -r u0 s0 < <(ticks "$pid")
  perf_start "$pid"
  out=$(wrk -t 1 -c "$CONNECTIONS" -d "${DURATION}s" --latency -s "$sig/calls.lua" "http://127.0.0.1:$port/" 2>&1)
  read -r u1 s1 < <(ticks "$pid")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  total=$(echo "$out" | awk '/requests in/ {print $1}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  perf_stop wrk "$mode" "$b" "$t" "$total"
  echo "wrk $mode $b $t $rps $total $p99 $((u1 - u0)) $((s1 - s0)) $(getconf CLK_TCK)" >> "$WORK/${RESULTS_FILE:-results.txt}"
  printf '   %-4s %-9s %-6s %-9s %10s req/s  p99 %-8s  user %5d  sys %5d ticks\n' wrk "$mode" "$b" "$t" "$rps" "$p99" $((u1 - u0)) $((s1 - s0))
}

for mode in $MODES; do
  if [ "$mode" = admitted ]; then targets=(tollgate nginx haproxy pass direct); else targets=(tollgate nginx haproxy); fi
  [ -n "${BEFORE:-}" ] && targets+=(before)
  if [ -n "$TARGETS" ]; then
    kept=(); for t in "${targets[@]}"; do [[ " $TARGETS " == *" $t "* ]] && kept+=("$t"); done
    targets=("${kept[@]}")
  fi
  for b in $BACKENDS; do
    echo "== $mode, backend $b (${DURATION}s runs, $ROUNDS rounds, generators: $GENERATORS)"
    for r in $(seq 1 "$ROUNDS"); do
      n=${#targets[@]}
      for i in $(seq 0 $((n - 1))); do
        for gen in $GENERATORS; do run "$gen" "$mode" "$b" "${targets[$(( (i + r - 1) % n ))]}"; done
      done
    done
  done
done

# PROFILE=dir: after the rounds, one more run per generator, mode and backend of each Tollgate
# target under `perf record -e cpu-clock:u -g` (user time, call graphs), not counted in the
# figures; `perf report -i dir/<generator>-<mode>-<backend>-<target>.data` reads them. Frame
# pointers make the call graphs whole: build with RUSTFLAGS="-C force-frame-pointers=yes".
if [ -n "${PROFILE:-}" ]; then
  mkdir -p "$PROFILE"
  for mode in $MODES; do
    for b in $BACKENDS; do
      for t in tollgate ${BEFORE:+before}; do
        key="tollgate-$b"; [ "$t" = before ] && key="before-$b"
        for gen in $GENERATORS; do
          perf record -q -e cpu-clock:u -g -p "${PID[$key]}" -o "$PROFILE/$gen-$mode-$b-$t.data" >/dev/null 2>&1 &
          perf_pid=$!
          sleep 0.5
          RESULTS_FILE=profiled.txt run "$gen" "$mode" "$b" "$t" >/dev/null
          kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
          echo "   profile: $PROFILE/$gen-$mode-$b-$t.data"
        done
      done
    done
  done
fi

python3 - "$WORK/results.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for gen, mode, b, t, rps, total, p99, u, s, hz in rows:
    calls = max(int(total), 1)
    by.setdefault((gen, mode, b), {}).setdefault(t, []).append(
        (float(rps), 1e6 * int(u) / int(hz) / calls, 1e6 * int(s) / int(hz) / calls, p99))
print("\nEvery round (generator mode backend target req/s user-us sys-us p99):")
for gen, mode, b, t, rps, total, p99, u, s, hz in rows:
    calls = max(int(total), 1)
    print("  %s %s %s %s %.0f %.1f %.1f %s" % (gen, mode, b, t, float(rps), 1e6 * int(u) / int(hz) / calls, 1e6 * int(s) / int(hz) / calls, p99))
print("\n| generator | mode | backend | target | req/s (median) | user µs/call | sys µs/call | p99 (last round) |")
print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: |")
summary = []
for (gen, mode, b), ts in by.items():
    med = {t: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v), statistics.median(x[2] for x in v), v[-1][3]) for t, v in ts.items()}
    for t, (r, u, s, p) in med.items():
        print("| %s | %s | %s | %s | %.0f | %.1f | %.1f | %s |" % (gen, mode, b, t, r, u, s, p))
    peers = [t for t in ("nginx", "haproxy") if t in med]
    if "tollgate" not in med or not peers:
        continue
    best = max(peers, key=lambda t: med[t][0])
    before = med["tollgate"][0] / med["before"][0] if "before" in med else None
    summary.append((gen, mode, b, med["tollgate"][0] / med[best][0], best, med["tollgate"][1], med.get("nginx", (0, 0))[1], med.get("haproxy", (0, 0))[1], before, med.get("before", (0, 0))[1]))
print("\n| generator | mode | backend | Tollgate / best peer (req/s) | best peer | Tollgate user µs/call | nginx user µs/call | HAProxy user µs/call | Tollgate / before (req/s) | before user µs/call |")
print("| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
for gen, mode, b, ratio, best, tu, nu, hu, before, bu in summary:
    print("| %s | %s | %s | %.2f× | %s | %.1f | %.1f | %.1f | %s | %s |" % (gen, mode, b, ratio, best, tu, nu, hu,
          "%.2f×" % before if before else "—", "%.1f" % bu if before else "—"))
PY

if [ -s "$WORK/perfstat.txt" ]; then
  python3 - "$WORK/perfstat.txt" <<'PY'
import statistics, sys
by = {}
for gen, mode, b, t, calls, cs, ep, sc in (l.split() for l in open(sys.argv[1])):
    n = max(int(calls), 1)
    by.setdefault((gen, mode, b, t), []).append((int(cs) / n, int(ep) / n, int(sc) / n))
print("\n| generator | mode | backend | target | context switches per call | epoll_wait per call | system calls per call |")
print("| --- | --- | --- | --- | ---: | ---: | ---: |")
for (gen, mode, b, t), v in by.items():
    print("| %s | %s | %s | %s | %.3f | %.3f | %.2f |" % (gen, mode, b, t, *(statistics.median(x[i] for x in v) for i in range(3))))
PY
fi
