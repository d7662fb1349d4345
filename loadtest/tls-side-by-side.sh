#!/usr/bin/env bash
# HTTPS and HTTP/2: Tollgate terminating TLS (rustls) against nginx terminating TLS with the
# same certificate (ECDSA P-256), protocols and ciphers, both in front of the same stub
# backend, driven by load generators that are not ours: wrk (HTTP/1.1 over TLS, a Lua script
# of pre-signed calls) and h2load (HTTP/2 by ALPN). Tollgate verifies every signature, admits
# every call and writes every usage record durably; nginx only proxies. Three modes:
#   keepalive   wrk, CONNECTIONS keep-alive connections;
#   handshake   wrk, `Connection: close` on every call: a new TCP connection and a full TLS
#               handshake per call;
#   h2          h2load, 16 connections x 10 concurrent streams.
# Rounds interleave the two targets (the order alternates); the summary gives medians of
# requests/s and proxy CPU (user + system) per call, and the median of the per-round ratios.
#
#   loadtest/tls-side-by-side.sh        # DURATION=10 ROUNDS=3 CONNECTIONS=64
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
for t in "$NGINX" "$(command -v wrk)" "$(command -v h2load)"; do
  [ -x "$t" ] || { echo "needs nginx, wrk and h2load (apt-get install nginx-light wrk nghttp2-client)"; exit 1; }
done

echo "== building (release)"
cargo build --release -q
TOLLGATE=$ROOT/target/release/tollgate

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx-tls.pid" ] && kill "$(cat "$WORK/nginx-tls.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

. loadtest/lib.sh
STUB=$(port); TG=$(port); TG_ADMIN=$(port); NG=$(port)

echo "== certificate and config in $WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
mkdir -p "$WORK/config" "$WORK/body-tls" "$WORK/proxy-tls"
cp config/catalog.toml "$WORK/config/"
open_accounts 8 200000000000 open '["bda"]' > "$WORK/config/entitlements.toml"
credentials 8 200000000000 AKIDtlsOpen tls-open-key- > "$WORK/config/credentials.toml"
cat > "$WORK/config/tollgate.toml" <<TOML
[listen]
api = "127.0.0.1:$TG"
admin = "127.0.0.1:$TG_ADMIN"
[tls]
cert_file = "$WORK/tls.crt"
key_file = "$WORK/tls.key"
[upstream.default]
url = "http://127.0.0.1:$STUB"
[proxy]
pool_max_idle_per_host = 1024
[metering]
sink = "spool"
gateway_id = "gw-tls-side-by-side"
spool_dir = "$WORK/spool"
batch_dir = "$WORK/batches"
[log]
level = "warn"
TOML
sed -e "s|@DIR@|$WORK|g" -e "s|@PORT@|$NG|g" -e "s|@STUB@|$STUB|g" \
  loadtest/tls/nginx.conf.template > "$WORK/nginx-tls.conf"

echo "== starting the stub backend, Tollgate and nginx"
"$TOLLGATE" stub --listen "127.0.0.1:$STUB" >"$WORK/stub.log" 2>&1 & STUB_PID=$!; PIDS+=($STUB_PID)
wait_port "$STUB"
"$TOLLGATE" gateway --config "$WORK/config/tollgate.toml" >"$WORK/gateway.log" 2>&1 & TG_PID=$!; PIDS+=($TG_PID)
wait_port "$TG"
"$NGINX" -c "$WORK/nginx-tls.conf" -p "$WORK" -q
wait_port "$NG"
NG_PID=$(cat "$WORK/nginx-tls.pid")

cpu_ticks() { # a process and its children (nginx: the master and its workers)
  local total=0 p
  for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
    [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14+$15}' "/proc/$p/stat")))
  done
  echo "$total"
}

admitted() { # calls Tollgate admitted so far
  curl -s "http://127.0.0.1:$TG_ADMIN/metrics" | awk '/^tollgate_admission_decisions_total/ && /decision="admitted"/ {s += $2} END {printf "%d", s}'
}

run() { # label mode port pid
  local label=$1 mode=$2 port=$3 pid=$4 before after out admitted_before admitted_after
  # Signed now, for this target's Host (the signature covers it).
  python3 loadtest/tls/tc3_sign.py "127.0.0.1:$port" 8 AKIDtlsOpen tls-open-key- "$WORK/sig-$label" \
    $([ "$mode" = handshake ] && echo close) 
  admitted_before=$(admitted)
  before=$(cpu_ticks "$pid")
  case $mode in
    keepalive|handshake)
      out=$(wrk -t 1 -c "$CONNECTIONS" -d "${DURATION}s" --latency -s "$WORK/sig-$label/calls.lua" "https://127.0.0.1:$port/" 2>&1)
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      errors=$(echo "$out" | awk '/Non-2xx/ {print $NF} /Socket errors/ {print}' | tr '\n' ' ')
      ;;
    h2)
      mapfile -t hargs < "$WORK/sig-$label/h2load.args"
      out=$(h2load -D "$DURATION" -c 16 -m 10 -t 1 "${hargs[@]}" -d "$WORK/sig-$label/body.json" "https://127.0.0.1:$port/" 2>&1)
      rps=$(echo "$out" | awk '/^finished in/ {print $4}')
      errors=$(echo "$out" | awk '/^requests:/ {print} /^status codes:/ {print}' | tr '\n' ' ')
      ;;
  esac
  after=$(cpu_ticks "$pid")
  admitted_after=$(admitted)
  # Tollgate answers refusals with HTTP 200 too (the vendor's shape): count what it admitted.
  [ "$pid" = "$TG_PID" ] && errors="admitted $((admitted_after - admitted_before)) $errors"
  echo "$label $mode $rps $((after - before)) $(getconf CLK_TCK) $errors" >> "$WORK/results.txt"
  printf '   %-28s %10s req/s   %s\n' "$label" "$rps" "$errors"
}

for mode in keepalive handshake h2; do
  echo "== mode: $mode (${DURATION}s per run, $ROUNDS rounds)"
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="tollgate nginx"; else order="nginx tollgate"; fi
    for t in $order; do
      if [ "$t" = tollgate ]; then run "tollgate-$mode-r$r" "$mode" "$TG" "$TG_PID"
      else run "nginx-$mode-r$r" "$mode" "$NG" "$NG_PID"; fi
    done
  done
done

# Every Tollgate call was admitted (not refused): "admitted" per run above equals its
# requests; and the refusals, whatever their reason, in all:
echo "== gateway refusals (any reason): $(curl -s "http://127.0.0.1:$TG_ADMIN/metrics" | awk '/^tollgate_admission_decisions_total/ && !/decision="admitted"/ {s += $2} END {printf "%d", s}')"
python3 - "$WORK/results.txt" "$DURATION" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
dur = float(sys.argv[2])
by = {}
for r in rows:
    label, mode, rps, ticks, hz = r[0], r[1], float(r[2] or 0), int(r[3]), int(r[4])
    target, rnd = label.split("-")[0], label.split("-")[-1]
    cpu_us = ticks / hz / max(rps * dur, 1) * 1e6
    by.setdefault(mode, {}).setdefault(rnd, {})[target] = (rps, cpu_us)
print("\n| mode | Tollgate req/s | nginx req/s | ratio (median of rounds) | Tollgate CPU µs/call | nginx CPU µs/call |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for mode, rounds in by.items():
    tg = [v["tollgate"] for v in rounds.values() if "tollgate" in v and "nginx" in v]
    ng = [v["nginx"] for v in rounds.values() if "tollgate" in v and "nginx" in v]
    ratios = [t[0] / n[0] for t, n in zip(tg, ng) if n[0]]
    print("| %s | %.0f | %.0f | %.2f× | %.1f | %.1f |" % (
        mode, statistics.median(t[0] for t in tg), statistics.median(n[0] for n in ng),
        statistics.median(ratios), statistics.median(t[1] for t in tg), statistics.median(n[1] for n in ng)))
PY
