#!/usr/bin/env bash
# End-to-end billable events per second through the durable pipeline: gateway (spool) → NATS
# JetStream → settlement consumer → PostgreSQL ledger, on private server instances. Loads the
# gateway at maximum speed with billable calls, then reports the gateway's billable answers/s,
# the rate the ledger absorbed them, and that the ledger holds exactly what clients received.
#
#   loadtest/pipeline-bench.sh            # DURATION=20 by default
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-20}
cargo build --release -q
cargo build --release -q --manifest-path loadtest/Cargo.toml
TOLLGATE=$ROOT/target/release/tollgate
LOADTEST=$ROOT/loadtest/target/release/tollgate-loadtest
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
PGBIN=$(dirname "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -n1)")

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -f "$WORK/pg/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
. loadtest/lib.sh
STUB=$(port); TG=$(port); TG_ADMIN=$(port); NATS_PORT=$(port); PG_PORT=$(port); CONS_ADMIN=$(port)

echo "== nats-server (JetStream) and PostgreSQL in $WORK"
"$NATS" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/nats" >/dev/null 2>&1 & PIDS+=($!)
chown postgres "$WORK" 2>/dev/null || true
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres --no-sync >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $WORK" -w start >/dev/null
wait_port "$NATS_PORT"
PG="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"

mkdir -p "$WORK/config"
cp config/catalog.toml "$WORK/config/"
open_accounts 8 400000000000 load '["bda"]' > "$WORK/config/entitlements.toml"
credentials 8 400000000000 AKIDpipe pipeline-bench-key- > "$WORK/config/credentials.toml"
cat > "$WORK/config/tollgate.toml" <<TOML
[listen]
api = "127.0.0.1:$TG"
admin = "127.0.0.1:$TG_ADMIN"
[upstream.default]
url = "http://127.0.0.1:$STUB"
[metering]
sink = "spool"
gateway_id = "gw-bench"
spool_dir = "$WORK/spool"
ship_to = "nats"
nats_url = "nats://127.0.0.1:$NATS_PORT"
[log]
level = "warn"
TOML
{ printf 'name = "pipeline"\ndescription = "billable calls at maximum speed"\nduration_secs = %s\n\n' "$DURATION"
  segment_streams 8 load AKIDpipe 8; } > "$WORK/load.toml"

"$TOLLGATE" stub --listen "127.0.0.1:$STUB" >/dev/null 2>&1 & PIDS+=($!)
"$TOLLGATE" gateway --config "$WORK/config/tollgate.toml" >"$WORK/gateway.log" 2>&1 & GW=$!; PIDS+=($GW)
"$TOLLGATE" consumer --postgres "$PG" --nats-url "nats://127.0.0.1:$NATS_PORT" --admin-listen "127.0.0.1:$CONS_ADMIN" >"$WORK/consumer.log" 2>&1 & PIDS+=($!)
wait_port "$STUB"; wait_port "$TG"; wait_port "$CONS_ADMIN"

echo "== load: ${DURATION}s at maximum speed"
START=$(date +%s.%N)
"$LOADTEST" --scenario "$WORK/load.toml" --target "127.0.0.1:$TG" --config-dir "$WORK/config" -q --report-json "$WORK/load.json" > "$WORK/load.txt" 2>&1 || true
RECEIVED=$(python3 -c "import json; print(json.load(open('$WORK/load.json'))['totals']['admitted'])")
WINDOW=$(python3 -c "import json; r=json.load(open('$WORK/load.json')); print(r['send_window_secs'])")
kill -TERM "$GW"; wait "$GW" 2>/dev/null || true

units() { psql_out=$(runuser -u postgres -- "$PSQL" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc "SELECT coalesce(sum(units),0) FROM usage_ledger" 2>/dev/null || echo 0); echo "${psql_out:-0}"; }
PSQL=$(command -v psql || echo "$PGBIN/psql")
for _ in $(seq 1 600); do
  U=$(units)
  [ "$U" -ge "$RECEIVED" ] && break
  sleep 0.1
done
END=$(date +%s.%N)
U=$(units)
python3 - "$RECEIVED" "$U" "$WINDOW" "$START" "$END" <<'PY'
import sys
received, ledger, window, start, end = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
total = end - start
print(f"\nbillable answers received by clients: {received} in {window:.1f} s = {received / window:.0f}/s through the gateway")
print(f"ledger units after the pipeline drained: {ledger} (exact: {ledger == received})")
print(f"end to end (first call sent to last unit committed): {total:.1f} s = {ledger / total:.0f} billable events/s")
PY
