#!/usr/bin/env bash
# Latency under load (issue 15): p99 added by the gateway at half of its saturation rate, in
# open loop (calls scheduled at a fixed rate whatever the answers, so queueing shows and there
# is no coordinated omission), against nginx limit_req at the same rate and the backend called
# directly (the latency floor). Tollgate verifies every signature and writes every usage record
# durably; nginx only proxies.
#
# 1. Tollgate's saturation: a closed-loop run at full speed (64 connections) -> S calls/s.
# 2. RATE = S / 2 (or $RATE): ROUNDS interleaved open-loop runs of Tollgate, nginx and the
#    backend direct at RATE; medians of p50 and p99, and p99 added = p99(target) - p99(direct).
#
# 3. With WRK2=/path/to/wrk2 (github.com/giltene/wrk2: `make`), the same rounds again with
#    wrk2 at the same rate (-R, 1 thread, 64 connections, pre-signed calls from
#    loadtest/tls/tc3_sign.py): a second open-loop generator that is not the project's, with
#    its own coordinated-omission correction.
#
# BEFORE=/path/to/an/older/tollgate adds it as a fourth target, interleaved (same config).
#
#   loadtest/latency-half-load.sh        # DURATION=10 ROUNDS=3 [WRK2=...] [BEFORE=...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
[ -x "$NGINX" ] || { echo "nginx is not installed (apt-get install nginx-light)"; exit 1; }
echo "== building (release)"
cargo build --release -q
cargo build --release -q --manifest-path loadtest/Cargo.toml
TOLLGATE=$ROOT/target/release/tollgate
LOADTEST=$ROOT/loadtest/target/release/tollgate-loadtest
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx-limit.pid" ] && kill "$(cat "$WORK/nginx-limit.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
. loadtest/lib.sh
STUB=$(port); TG=$(port); TG_ADMIN=$(port); NG=$(port); BF=$(port); BF_ADMIN=$(port)
TARGETS=(tollgate nginx direct); [ -n "${BEFORE:-}" ] && TARGETS+=(before)
mkdir -p "$WORK/config" "$WORK/body-limit" "$WORK/proxy-limit"
cp config/catalog.toml "$WORK/config/"
open_accounts 8 200000000000 open '["bda"]' > "$WORK/config/entitlements.toml"
credentials 8 200000000000 AKIDlatOpen lat-open-key- > "$WORK/config/credentials.toml"
cat > "$WORK/config/tollgate.toml" <<TOML
[listen]
api = "127.0.0.1:$TG"
admin = "127.0.0.1:$TG_ADMIN"
[upstream.default]
url = "http://127.0.0.1:$STUB"
[proxy]
pool_max_idle_per_host = 1024
[metering]
sink = "spool"
gateway_id = "gw-latency"
spool_dir = "$WORK/spool"
batch_dir = "$WORK/batches"
[log]
level = "warn"
TOML
sed -e "s|127.0.0.1:$TG\"|127.0.0.1:$BF\"|" -e "s|127.0.0.1:$TG_ADMIN\"|127.0.0.1:$BF_ADMIN\"|" \
    -e "s|gw-latency|gw-latency-before|" -e "s|$WORK/spool|$WORK/spool-before|" -e "s|$WORK/batches|$WORK/batches-before|" \
    "$WORK/config/tollgate.toml" > "$WORK/config/before.toml"
sed -e "s|@DIR@|$WORK|g" -e "s|@NAME@|limit|g" -e "s|@RATE@|1000000r/s|g" \
    -e "s|@LIMIT@|limit_req zone=api burst=1000000 nodelay;|g" -e "s|@PORT@|$NG|g" -e "s|@STUB@|$STUB|g" \
    -e "s|@MODE@|limit|g" loadtest/side-by-side/nginx.conf.template > "$WORK/nginx-limit.conf"

streams() { # mode extra
  for i in $(seq 1 8); do
    printf '[[stream]]\nname = "open-%d"\nsecret_id = "AKIDlatOpen%03d"\nservice = "bda"\naction = "SegmentPortraitPic"\nmode = "%s"\n%s\n[stream.headers]\nX-Stub-Image-Bytes = "0"\n\n' "$i" "$i" "$1" "$2"
  done
}
{ printf 'name = "saturation"\nduration_secs = %s\n\n' "$DURATION"; streams closed "concurrency = 8"; } > "$WORK/saturation.toml"
{ printf 'name = "half-load"\nduration_secs = %s\n\n' "$DURATION"; streams open "weight = 1"; } > "$WORK/open.toml"

"$TOLLGATE" stub --listen "127.0.0.1:$STUB" >"$WORK/stub.log" 2>&1 & PIDS+=($!); wait_port "$STUB"
"$TOLLGATE" gateway --config "$WORK/config/tollgate.toml" >"$WORK/gateway.log" 2>&1 & PIDS+=($!); wait_port "$TG"
if [ -n "${BEFORE:-}" ]; then
  "$BEFORE" gateway --config "$WORK/config/before.toml" >"$WORK/before.log" 2>&1 & PIDS+=($!); wait_port "$BF"
fi
"$NGINX" -c "$WORK/nginx-limit.conf" -p "$WORK" -q; wait_port "$NG"

field() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); t=r["totals"]; w=r["send_window_secs"] or r["duration_secs"]; print({"rps": (t["sent"]-t["transport_errors"])/w, "p50": t["latency"]["all"]["p50_ms"], "p99": t["latency"]["all"]["p99_ms"], "admitted": t["admitted"]/w}[sys.argv[2]])' "$1" "$2"; }

echo "== Tollgate's saturation (closed loop, 64 connections, ${DURATION}s)"
"$LOADTEST" --scenario "$WORK/saturation.toml" --target "127.0.0.1:$TG" --config-dir "$WORK/config" --quiet --report-json "$WORK/sat.json" > "$WORK/sat.txt" 2>&1 || true
SAT=$(field "$WORK/sat.json" rps)
RATE=${RATE:-$(python3 -c "print(int($SAT / 2))")}
echo "   saturation $(printf '%.0f' "$SAT") calls/s -> open-loop rate $RATE calls/s"

N=${#TARGETS[@]}
for r in $(seq 1 "$ROUNDS"); do
  for i in $(seq 0 $((N - 1))); do
    t=${TARGETS[$(( (i + r - 1) % N ))]}
    case $t in tollgate) p=$TG ;; nginx) p=$NG ;; direct) p=$STUB ;; before) p=$BF ;; esac
    "$LOADTEST" --scenario "$WORK/open.toml" --target "127.0.0.1:$p" --config-dir "$WORK/config" --rate "$RATE" \
      --quiet --report-json "$WORK/$t-r$r.json" > "$WORK/$t-r$r.txt" 2>&1 || true
    printf '   round %d %-9s %8.0f calls/s  p50 %7.3f ms  p99 %7.3f ms\n' "$r" "$t" \
      "$(field "$WORK/$t-r$r.json" rps)" "$(field "$WORK/$t-r$r.json" p50)" "$(field "$WORK/$t-r$r.json" p99)"
  done
done
python3 - "$WORK" "$ROUNDS" "$RATE" <<'PY'
import json, statistics, sys
work, rounds, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def lat(t, r):
    x = json.load(open(f"{work}/{t}-r{r}.json"))["totals"]["latency"]["all"]
    return x["p50_ms"], x["p99_ms"]
import os
targets = [t for t in ("tollgate", "nginx", "direct", "before") if os.path.exists(f"{work}/{t}-r1.json")]
res = {t: [lat(t, r) for r in range(1, rounds + 1)] for t in targets}
added = {t: [res[t][i][1] - res["direct"][i][1] for i in range(rounds)] for t in targets if t != "direct"}
print(f"\n| target (open loop at {rate} calls/s) | p50 ms | p99 ms | p99 added over the backend direct, ms |")
print("| --- | ---: | ---: | ---: |")
for t in targets:
    p50 = statistics.median(x[0] for x in res[t]); p99 = statistics.median(x[1] for x in res[t])
    a = "—" if t == "direct" else "%.3f" % statistics.median(added[t])
    print(f"| {t} | {p50:.3f} | {p99:.3f} | {a} |")
PY

if [ -n "${WRK2:-}" ]; then
  echo "== wrk2 at $RATE calls/s (open loop, 1 thread, 64 connections)"
  ms() { python3 -c 'import sys; v=sys.argv[1]; u={"us":1e-3,"ms":1,"s":1e3}; n=v.rstrip("usm"); print(float(n)*u[v[len(n):]])' "$1"; }
  : > "$WORK/wrk2.txt"
  for r in $(seq 1 "$ROUNDS"); do
    for i in $(seq 0 $((N - 1))); do
      t=${TARGETS[$(( (i + r - 1) % N ))]}
      case $t in tollgate) p=$TG ;; nginx) p=$NG ;; direct) p=$STUB ;; before) p=$BF ;; esac
      python3 loadtest/tls/tc3_sign.py "127.0.0.1:$p" 8 AKIDlatOpen lat-open-key- "$WORK/sig-$t" > /dev/null
      out=$("$WRK2" -t 1 -c 64 -d "${DURATION}s" -R "$RATE" --latency -s "$WORK/sig-$t/calls.lua" "http://127.0.0.1:$p/" 2>&1)
      p50=$(ms "$(echo "$out" | awk '$1 == "50.000%" {print $2; exit}')")
      p99=$(ms "$(echo "$out" | awk '$1 == "99.000%" {print $2; exit}')")
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      echo "$t $r $rps $p50 $p99" >> "$WORK/wrk2.txt"
      printf '   round %d %-9s %8.0f calls/s  p50 %7.3f ms  p99 %7.3f ms (wrk2)\n' "$r" "$t" "$rps" "$p50" "$p99"
    done
  done
  python3 - "$WORK/wrk2.txt" "$RATE" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
res = {}
for t, r, rps, p50, p99 in rows:
    res.setdefault(t, {})[int(r)] = (float(p50), float(p99))
rounds = sorted(res["direct"])
print(f"\n| target (wrk2, open loop at {sys.argv[2]} calls/s) | p50 ms | p99 ms | p99 added over the backend direct, ms |")
print("| --- | ---: | ---: | ---: |")
for t in [t for t in ("tollgate", "nginx", "direct", "before") if t in res]:
    p50 = statistics.median(res[t][r][0] for r in rounds); p99 = statistics.median(res[t][r][1] for r in rounds)
    a = "—" if t == "direct" else "%.3f" % statistics.median(res[t][r][1] - res["direct"][r][1] for r in rounds)
    print(f"| {t} | {p50:.3f} | {p99:.3f} | {a} |")
PY
fi
