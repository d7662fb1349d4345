#!/usr/bin/env bash
# Tollgate vs nginx (limit_req) vs a plain pass-through proxy: one run, one machine, the same
# stub backend, the same load generator (loadtest/, TC3-signed calls; nginx checks no signature,
# Tollgate verifies every one). Two modes:
#   admitted  every call admitted (quotas far above the load), closed loop at maximum speed;
#   overload  50 keys at 20 calls/s each, closed loop at maximum speed (far beyond 10x).
# Prints requests/s, p50 and p99 latency of each, and the ratios Tollgate/nginx and
# Tollgate/ceiling. Results: loadtest/RESULTS.md.
#
# Each mode runs ROUNDS rounds, the three targets interleaved (the order rotates every round),
# and the summary gives medians over the rounds and the median of the per-round ratios: on a
# shared VM the machine's speed drifts by 10-25% within minutes, and targets run minutes apart
# would be compared across that drift.
#
#   loadtest/side-by-side.sh                  # DURATION=10 ROUNDS=3 CONNECTIONS=64 by default
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
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
  for n in limit-admitted limit-overload passthrough; do
    [ -f "$WORK/nginx-$n.pid" ] && kill "$(cat "$WORK/nginx-$n.pid")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

. loadtest/lib.sh
STUB=$(port); TG=$(port); TG_ADMIN=$(port); NG_ADMITTED=$(port); NG_OVERLOAD=$(port); NG_PASS=$(port)

echo "== config in $WORK"
mkdir -p "$WORK/config"
cp config/catalog.toml "$WORK/config/"
{
  echo '# Side-by-side accounts: 8 with segmentation quotas far above any load, 50 at the default 20 QPS.'
  open_accounts 8 200000000000 open '["bda", "ocr"]'
  for i in $(seq 1 50); do
    printf '[[account]]\nuin = %d\nname = "limited-%d"\nservices = ["ocr"]\npostpaid = true\n\n' $((300000000000 + i)) "$i"
  done
} > "$WORK/config/entitlements.toml"
{
  credentials 8 200000000000 AKIDsbsOpen side-by-side-open-key-
  credentials 50 300000000000 AKIDsbsLimited side-by-side-limited-key-
} > "$WORK/config/credentials.toml"
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
gateway_id = "gw-side-by-side"
spool_dir = "$WORK/spool"
batch_dir = "$WORK/batches"
[log]
level = "warn"
TOML

# Scenarios: the same streams for every target.
{
  printf 'name = "admitted"\ndescription = "every call admitted: quotas far above the load"\nduration_secs = %s\n\n' "$DURATION"
  segment_streams 8 open AKIDsbsOpen $((CONNECTIONS / 8))
} > "$WORK/admitted.toml"
{
  printf 'name = "overload"\ndescription = "50 keys at 20 calls/s each, offered far beyond 10x"\nduration_secs = %s\n\n' "$DURATION"
  limited_streams 50 AKIDsbsLimited "$CONNECTIONS"
} > "$WORK/overload.toml"

nginx_conf() { # name rate limit-directive port
  sed -e "s|@DIR@|$WORK|g" -e "s|@NAME@|$1|g" -e "s|@RATE@|$2|g" -e "s|@LIMIT@|$3|g" \
      -e "s|@PORT@|$4|g" -e "s|@STUB@|$STUB|g" -e "s|@MODE@|$1|g" \
      loadtest/side-by-side/nginx.conf.template > "$WORK/nginx-$1.conf"
  mkdir -p "$WORK/body-$1" "$WORK/proxy-$1"
  "$NGINX" -c "$WORK/nginx-$1.conf" -p "$WORK" -q
}

echo "== starting the stub backend, Tollgate and three nginx"
"$TOLLGATE" stub --listen "127.0.0.1:$STUB" >"$WORK/stub.log" 2>&1 & STUB_PID=$!; PIDS+=($STUB_PID)
wait_port "$STUB"
"$TOLLGATE" gateway --config "$WORK/config/tollgate.toml" >"$WORK/gateway.log" 2>&1 & TG_PID=$!; PIDS+=($TG_PID)
wait_port "$TG"
nginx_conf limit-admitted "1000000r/s" "limit_req zone=api burst=1000000 nodelay;" "$NG_ADMITTED"
nginx_conf limit-overload "20r/s" "limit_req zone=api burst=20 nodelay;" "$NG_OVERLOAD"
nginx_conf passthrough "1r/s" "" "$NG_PASS"
wait_port "$NG_ADMITTED"; wait_port "$NG_OVERLOAD"; wait_port "$NG_PASS"

# CPU seconds used so far by a process and its children (nginx: the master and its workers).
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
    [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14+$15}' "/proc/$p/stat")))
  done
  echo "$total"
}

run() { # label scenario target-port target-pid
  local before after stub_before stub_after
  before=$(cpu_ticks "$4"); stub_before=$(cpu_ticks "$STUB_PID")
  "$LOADTEST" --scenario "$WORK/$2.toml" --target "127.0.0.1:$3" --config-dir "$WORK/config" \
    --quiet --report-json "$WORK/$1.json" > "$WORK/$1.txt" 2>&1 || true
  after=$(cpu_ticks "$4"); stub_after=$(cpu_ticks "$STUB_PID")
  echo "$((after - before)) $(getconf CLK_TCK) $((stub_after - stub_before))" > "$WORK/$1.cpu"
  echo "   $1 done"
}

NG_ADMITTED_PID=$(cat "$WORK/nginx-limit-admitted.pid")
NG_OVERLOAD_PID=$(cat "$WORK/nginx-limit-overload.pid")
NG_PASS_PID=$(cat "$WORK/nginx-passthrough.pid")
for mode in admitted overload; do
  echo "== mode: $mode (${DURATION}s per run, $ROUNDS rounds, $CONNECTIONS connections)"
  if [ "$mode" = admitted ]; then NG_PORT=$NG_ADMITTED; NG_PID=$NG_ADMITTED_PID; else NG_PORT=$NG_OVERLOAD; NG_PID=$NG_OVERLOAD_PID; fi
  for r in $(seq 1 "$ROUNDS"); do
    order=(tollgate nginx ceiling)
    for i in 0 1 2; do
      t=${order[$(( (i + r - 1) % 3 ))]}
      case $t in
        tollgate) run "tollgate-$mode-r$r" "$mode" "$TG" "$TG_PID" ;;
        nginx) run "nginx-$mode-r$r" "$mode" "$NG_PORT" "$NG_PID" ;;
        ceiling) run "ceiling-$mode-r$r" "$mode" "$NG_PASS" "$NG_PASS_PID" ;;
      esac
    done
  done
done

python3 loadtest/side-by-side/summarize.py "$WORK" "$(nproc)" "$DURATION" "$CONNECTIONS" "$ROUNDS"
