#!/usr/bin/env bash
# Fleet quotas on Redis (`[quota] store = "redis"`): what they cost. A fleet of 3 gateways in
# front of one stub backend and a PRIVATE redis-server (a free port, no persistence; never the
# shared one on 6379), the load spread over the three by three load generators in parallel
# (tollgate-loadtest takes one --target), each with a third of the connections.
#
#   A "throughput"  every call admitted (8 accounts with segmentation in QPS mode at 10M QPS,
#                   lib.sh's open_accounts), closed loop at maximum speed: requests/s of the
#                   fleet and gateway CPU per call, store = "local" vs store = "redis",
#                   interleaved (the order alternates every round), ROUNDS x DURATION each.
#                   Targets: redis/local requests/s >= 0.95.
#   C "frozen"      the redis fleet under the admitted load, calm runs and runs with Redis
#                   SIGSTOPped for most of the run, interleaved: latency and throughput (the
#                   request path never waits for Redis) and the degraded gauge.
#   B "commands"    the redis fleet only: a hot key (one account, bda.segment in QPS mode at
#                   HOT_QPS, offered far more, closed loop) and a 20-QPS key (GeneralBasicOCR at
#                   the default quota) offered COLD_RATE calls/s open loop. Redis commands
#                   (tollgate_fleet_redis_commands_total, every op) per admitted call
#                   (tollgate_admission_decisions_total{decision="admitted"}) and per second,
#                   summed over the fleet's admin /metrics; the server's own count (INFO
#                   commandstats) beside it. Target for the hot key: <= 0.01 per call.
#
# Prints a markdown table and writes it to /tmp/fleet-bench-result.md (RESULT overrides).
# On a shared machine, each run also records the CPU used by processes not started here
# ("other load", in cores, from /proc/stat): a run with other load was disturbed.
#
#   loadtest/fleet-bench.sh      # DURATION=10 ROUNDS=3 CONNECTIONS=72 WORKERS=1 HOT_QPS=2000 COLD_RATE=200
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-72}   # over the whole fleet: CONNECTIONS/3 per load generator
WORKERS=${WORKERS:-1}            # [proxy] workers of each gateway
HOT_QPS=${HOT_QPS:-2000}
COLD_RATE=${COLD_RATE:-200}
RESULT=${RESULT:-/tmp/fleet-bench-result.md}
REDIS_SERVER=${REDIS_SERVER:-$(command -v redis-server || echo /usr/bin/redis-server)}
REDIS_CLI=${REDIS_CLI:-$(command -v redis-cli || echo /usr/bin/redis-cli)}
[ -x "$REDIS_SERVER" ] || { echo "redis-server is not installed (apt-get install redis-server)"; exit 1; }
[ -x "$REDIS_CLI" ] || { echo "redis-cli is not installed (apt-get install redis-tools)"; exit 1; }
N=3

echo "== building (release)"
cargo build --release -q
cargo build --release -q --manifest-path loadtest/Cargo.toml
TOLLGATE=$ROOT/target/release/tollgate
LOADTEST=$ROOT/loadtest/target/release/tollgate-loadtest

WORK=$(mktemp -d)
PIDS=()      # long-lived: stub, redis, gateways
LT_PIDS=()   # the load generators of the current run
cleanup() {
  set +e
  for p in "${LT_PIDS[@]}" "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${LT_PIDS[@]}" "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. loadtest/lib.sh
STUB=$(port); REDIS=$(port)
[ "$REDIS" != 6379 ] || REDIS=$(port)

echo "== config in $WORK"
mkdir -p "$WORK/common"
cp config/catalog.toml "$WORK/common/"
{
  echo '# Fleet bench: 8 open accounts (segmentation in QPS mode, far above any load), a hot key, a 20-QPS key.'
  open_accounts 8 200000000000 open '["bda", "ocr"]'
  printf '[[account]]\nuin = 400000000001\nname = "hot"\nservices = ["bda"]\npostpaid = true\n\n[[account.mode]]\ngroup = "bda.segment"\nmode = "qps"\nquantity = %d\n\n' "$HOT_QPS"
  printf '[[account]]\nuin = 300000000001\nname = "limited"\nservices = ["ocr"]\npostpaid = true\n\n'
} > "$WORK/common/entitlements.toml"
{
  credentials 8 200000000000 AKIDfleetOpen fleet-bench-open-key-
  credentials 1 400000000000 AKIDfleetHot fleet-bench-hot-key-
  credentials 1 300000000000 AKIDfleetCold fleet-bench-cold-key-
} > "$WORK/common/credentials.toml"

# Scenarios, for ONE load generator (each of the three runs one).
PER_LT=$((CONNECTIONS / N))
{
  printf 'name = "admitted"\ndescription = "every call admitted: quotas far above the load"\nduration_secs = %s\n\n' "$DURATION"
  segment_streams 8 open AKIDfleetOpen $(( PER_LT / 8 > 0 ? PER_LT / 8 : 1 ))
} > "$WORK/admitted.toml"
{
  printf 'name = "hot-key"\ndescription = "one account, one group at %s QPS, closed loop far beyond it"\nduration_secs = %s\n\n' "$HOT_QPS" "$DURATION"
  segment_streams 1 hot AKIDfleetHot "$PER_LT"
} > "$WORK/hot.toml"
{
  printf 'name = "cold-key"\ndescription = "a 20-QPS key offered %s calls/s over the fleet"\nduration_secs = %s\n\n' "$COLD_RATE" "$DURATION"
  printf '[[stream]]\nname = "cold"\nsecret_id = "AKIDfleetCold001"\nservice = "ocr"\naction = "GeneralBasicOCR"\nrate = %s\n\n' \
    "$(python3 -c "print(round($COLD_RATE / $N, 4))")"
} > "$WORK/cold.toml"

# gateway_conf FLEET I: the config dir of gateway I of FLEET (local | redis); API and admin ports.
declare -A API ADMIN GW_PID
gateway_conf() {
  local d="$WORK/$1-$2" api admin quota
  api=$(port); admin=$(port)
  API[$1-$2]=$api; ADMIN[$1-$2]=$admin
  mkdir -p "$d"
  cp "$WORK/common/"*.toml "$d/"
  if [ "$1" = redis ]; then
    quota=$(printf '[quota]\nstore = "redis"\nredis_url = "redis://127.0.0.1:%s/"\nmember_id = "fleet-bench-%s"\n' "$REDIS" "$2")
  else
    quota=$(printf '[quota]\nstore = "local"\n')
  fi
  cat > "$d/tollgate.toml" <<TOML
[listen]
api = "127.0.0.1:$api"
admin = "127.0.0.1:$admin"
[upstream.default]
url = "http://127.0.0.1:$STUB"
[proxy]
pool_max_idle_per_host = 1024
workers = $WORKERS
[metering]
sink = "off"
$quota
[log]
level = "warn"
TOML
}

echo "== starting redis-server (private, port $REDIS), the stub backend and 2 fleets of $N gateways"
"$REDIS_SERVER" --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
  --logfile "$WORK/redis.log" >/dev/null 2>&1 & REDIS_PID=$!; PIDS+=($REDIS_PID)
wait_port "$REDIS"
"$TOLLGATE" stub --listen "127.0.0.1:$STUB" >"$WORK/stub.log" 2>&1 & STUB_PID=$!; PIDS+=($STUB_PID)
wait_port "$STUB"
for fleet in local redis; do
  for i in $(seq 1 $N); do
    gateway_conf "$fleet" "$i"
    "$TOLLGATE" gateway --config "$WORK/$fleet-$i/tollgate.toml" >"$WORK/$fleet-$i.log" 2>&1 &
    GW_PID[$fleet-$i]=$!; PIDS+=($!)
  done
done
for k in "${!API[@]}"; do wait_port "${API[$k]}"; wait_port "${ADMIN[$k]}"; done

# metrics FLEET: one JSON object, the fleet's admin /metrics summed (commands by op, decisions).
metrics() {
  local ports=() i
  for i in $(seq 1 $N); do ports+=("${ADMIN[$1-$i]}"); done
  python3 - "${ports[@]}" <<'PY'
import json, re, sys, urllib.request
out = {"commands": {}, "decisions": {}, "degraded": [], "members": [], "errors": {}, "leased": {}}
line = re.compile(r'^(\w+)(?:\{(.*)\})?\s+(\S+)$')
for p in sys.argv[1:]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=5).read().decode()
    for l in text.splitlines():
        m = line.match(l)
        if not m:
            continue
        name, labels, value = m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")), float(m.group(3))
        if name == "tollgate_fleet_redis_commands_total":
            out["commands"][labels["op"]] = out["commands"].get(labels["op"], 0) + value
        elif name == "tollgate_admission_decisions_total":
            out["decisions"][labels["decision"]] = out["decisions"].get(labels["decision"], 0) + value
        elif name == "tollgate_fleet_leased_calls_total":
            out["leased"][labels["kind"]] = out["leased"].get(labels["kind"], 0) + value
        elif name == "tollgate_fleet_redis_errors_total":
            out["errors"][labels["kind"]] = out["errors"].get(labels["kind"], 0) + value
        elif name == "tollgate_fleet_degraded":
            out["degraded"].append(value)
        elif name == "tollgate_fleet_members":
            out["members"].append(value)
print(json.dumps(out))
PY
}

echo "== waiting for the redis fleet to settle (every member sees $N, none degraded)"
settled=
for _ in $(seq 1 100); do
  m=$(metrics redis)
  if python3 -c "import json,sys; m=json.loads(sys.argv[1]); sys.exit(0 if m['degraded']==[0]*$N and m['members']==[$N]*$N else 1)" "$m"; then
    settled=1; break
  fi
  sleep 0.2
done
[ -n "$settled" ] || { echo "the redis fleet did not settle: $m"; exit 1; }
sleep 3.5   # past membership_ttl (3 s): every member is "settled" (may use its static share)

# Ticks (1/CLK_TCK s) of CPU used so far by processes $@.
ticks() { local t=0 p; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
# This shell's waited-for children (the load generators): cutime + cstime.
child_ticks() { awk '{print $16+$17}' /proc/$$/stat; }
# Ticks all processes used (user, nice, system) plus steal; not irq/softirq (loopback traffic,
# charged to no process).
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$9}' /proc/stat; }

# run LABEL FLEET SCENARIO [extra load-generator flags]: the three generators in parallel,
# generator I against gateway I. Writes LABEL-I.json/.txt and LABEL.cpu.
run() {
  local label=$1 fleet=$2 scen=$3 i gws=() g0 s0 r0 c0 b0 t0 g1 s1 r1 c1 b1 t1
  shift 3
  for i in $(seq 1 $N); do gws+=("${GW_PID[$fleet-$i]}"); done
  g0=$(ticks "${gws[@]}"); s0=$(ticks "$STUB_PID"); r0=$(ticks "$REDIS_PID"); c0=$(child_ticks); b0=$(busy_ticks)
  t0=$(date +%s.%N)
  LT_PIDS=()
  for i in $(seq 1 $N); do
    "$LOADTEST" --scenario "$WORK/$scen.toml" --target "127.0.0.1:${API[$fleet-$i]}" --config-dir "$WORK/$fleet-$i" \
      --quiet --report-json "$WORK/$label-$i.json" "$@" > "$WORK/$label-$i.txt" 2>&1 &
    LT_PIDS+=($!)
  done
  for p in "${LT_PIDS[@]}"; do wait "$p" || true; done
  LT_PIDS=()
  t1=$(date +%s.%N)
  g1=$(ticks "${gws[@]}"); s1=$(ticks "$STUB_PID"); r1=$(ticks "$REDIS_PID"); c1=$(child_ticks); b1=$(busy_ticks)
  echo "$((g1 - g0)) $((s1 - s0)) $((r1 - r0)) $((c1 - c0)) $((b1 - b0)) $(getconf CLK_TCK) $t0 $t1 $(cut -d' ' -f1 /proc/loadavg)" > "$WORK/$label.cpu"
  for i in $(seq 1 $N); do [ -s "$WORK/$label-$i.json" ] || { echo "   $label: generator $i wrote no report:"; cat "$WORK/$label-$i.txt"; exit 1; }; done
  python3 - "$WORK" "$label" $N <<'PY'
import json, sys
w, label, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = [json.load(open(f"{w}/{label}-{i}.json")) for i in range(1, n + 1)]
t = [x["totals"] for x in r]
rps = sum(x["sent"] / y["send_window_secs"] for x, y in zip(t, r))
adm = sum(x["admitted"] for x in t); sent = sum(x["sent"] for x in t)
print(f"   {label}: {rps:.0f} req/s, admitted {adm}/{sent}")
PY
}

# ---------------------------------------------------------------- A: throughput
echo "== A: throughput, local vs redis (${DURATION}s per run, $ROUNDS rounds, $CONNECTIONS connections over $N generators, workers = $WORKERS)"
echo "   warm-up"
for fleet in local redis; do
  "$LOADTEST" --scenario "$WORK/admitted.toml" --target "127.0.0.1:${API[$fleet-1]}" --config-dir "$WORK/$fleet-1" \
    --duration 2 --quiet > /dev/null 2>&1 || true
done
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order=(local redis); else order=(redis local); fi
  for fleet in "${order[@]}"; do run "A-$fleet-r$r" "$fleet" admitted; done
done

# ---------------------------------------------------------------- B: commands per admitted call
echo "== B: Redis commands per admitted call (redis fleet, ${DURATION}s per key)"
for key in hot cold; do
  sleep 2   # leases of the run before expire; the idle fleet's own traffic is in the window too
  "$REDIS_CLI" -p "$REDIS" config resetstat > /dev/null
  metrics redis > "$WORK/B-$key.before"
  if [ $key = hot ]; then run "B-$key" redis hot; else run "B-$key" redis cold --connections 16; fi
  metrics redis > "$WORK/B-$key.after"
  "$REDIS_CLI" -p "$REDIS" info commandstats > "$WORK/B-$key.redis"
done

# ---------------------------------------------------------------- C: Redis frozen
# The redis fleet under the admitted load; in every other run Redis is SIGSTOPped from 1 s in
# to 2 s before the end (calm and frozen interleaved): the load tool's latency is what a
# frozen Redis costs the request path (it should cost nothing).
echo "== C: Redis frozen under load (redis fleet, ${DURATION}s per run, $ROUNDS rounds)"
for r in $(seq 1 "$ROUNDS"); do
  sleep 2
  run "C-calm-r$r" redis admitted
  sleep 2
  ( sleep 1; kill -STOP "$REDIS_PID"; sleep $((DURATION - 3)); metrics redis > "$WORK/C-frozen-r$r.during"; kill -CONT "$REDIS_PID" ) &
  freezer=$!
  run "C-frozen-r$r" redis admitted
  wait "$freezer"
done
metrics redis > "$WORK/final.metrics"

# ---------------------------------------------------------------- summary
python3 - "$WORK" "$ROUNDS" "$N" "$DURATION" "$CONNECTIONS" "$WORKERS" "$HOT_QPS" "$COLD_RATE" "$(nproc)" > "$WORK/result.md" <<'PY'
import json, re, statistics as st, sys
w, rounds, n, duration, conns, workers, hot_qps, cold_rate, cores = sys.argv[1:]
rounds, n = int(rounds), int(n)
med = st.median

def load(label):
    r = [json.load(open(f"{w}/{label}-{i}.json")) for i in range(1, n + 1)]
    g, s, rd, c, b, hz, t0, t1, la = open(f"{w}/{label}.cpu").read().split()
    g, s, rd, c, b, hz = map(int, (g, s, rd, c, b, hz))
    wall = float(t1) - float(t0)
    t = [x["totals"] for x in r]
    sent = sum(x["sent"] for x in t)
    return {
        "rps": sum(x["sent"] / y["send_window_secs"] for x, y in zip(t, r)),
        "aps": sum(x["admitted"] / y["send_window_secs"] for x, y in zip(t, r)),
        "sent": sent,
        "admitted": sum(x["admitted"] for x in t),
        "rejected": sum(x["rejected"] for x in t),
        "p50": med([x["latency"]["all"]["p50_ms"] for x in t]),
        "p99": max(x["latency"]["all"]["p99_ms"] for x in t),
        "gw_us": g / hz / max(sent, 1) * 1e6,
        "redis_us": rd / hz / max(sent, 1) * 1e6,
        "stub_us": s / hz / max(sent, 1) * 1e6,
        # CPU of processes this script did not start, in cores, over the run.
        "other": max(0.0, (b - g - s - rd - c) / hz / wall),
        "load": float(la),
        "wall": wall,
    }

out = []
p = out.append
p(f"## Tollgate fleet bench ({n} gateways, workers = {workers}, one stub, private redis-server)\n")
p(f"{cores} cores; {duration} s per run; {conns} closed-loop connections over {n} load generators (one per gateway); metering off.\n")
p(f"### A. Throughput, every call admitted (8 open accounts, keys shared by the fleet), {rounds} interleaved rounds\n")
A = {f: [load(f"A-{f}-r{r}") for r in range(1, rounds + 1)] for f in ("local", "redis")}
p("| store | req/s (median) | runs req/s | admitted/s (median) | admitted | p50 / p99 ms | gateway CPU µs/call | redis-server CPU µs/call | other load (cores) per run |")
p("| --- | ---: | --- | ---: | --- | --- | ---: | ---: | --- |")
for f, runs in A.items():
    adm = sum(x["admitted"] for x in runs); sent = sum(x["sent"] for x in runs)
    p(f"| {f} | {med([x['rps'] for x in runs]):.0f} | {', '.join('%.0f' % x['rps'] for x in runs)} | {med([x['aps'] for x in runs]):.0f} | "
      f"{adm}/{sent} ({100 * adm / max(sent, 1):.3f} %) | {med([x['p50'] for x in runs]):.2f} / {med([x['p99'] for x in runs]):.2f} | "
      f"{med([x['gw_us'] for x in runs]):.1f} | {med([x['redis_us'] for x in runs]):.2f} | {', '.join('%.2f' % x['other'] for x in runs)} |")
rr = [b["rps"] / a["rps"] for a, b in zip(A["local"], A["redis"])]
cr = [b["gw_us"] / a["gw_us"] for a, b in zip(A["local"], A["redis"])]
ok = "meets" if med(rr) >= 0.95 else "MISSES"
p("")
p(f"| ratio redis / local | median of per-round ratios | per round | ratio of medians |")
p("| --- | ---: | --- | ---: |")
p(f"| requests/s (target ≥ 0.95: {ok}) | {med(rr):.3f} | {', '.join(f'{x:.3f}' for x in rr)} | {med([x['rps'] for x in A['redis']]) / med([x['rps'] for x in A['local']]):.3f} |")
ar = [b["aps"] / a["aps"] for a, b in zip(A["local"], A["redis"])]
p(f"| admitted/s | {med(ar):.3f} | {', '.join(f'{x:.3f}' for x in ar)} | {med([x['aps'] for x in A['redis']]) / med([x['aps'] for x in A['local']]):.3f} |")
p(f"| gateway CPU µs/call | {med(cr):.3f} | {', '.join(f'{x:.3f}' for x in cr)} | {med([x['gw_us'] for x in A['redis']]) / med([x['gw_us'] for x in A['local']]):.3f} |")
p("")

p(f"### B. Redis commands per admitted call (redis fleet)\n")
p("| key | limit | offered/s | admitted/s (fleet) | rejected | Redis commands (gateways' counters, by op) | commands/s | commands per admitted call | server-counted client commands per admitted call | other load (cores) |")
p("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
notes = []
for key, limit, target in (("hot", f"{hot_qps} QPS (QPS mode)", 0.01), ("cold", "20 QPS (default)", None)):
    run = load(f"B-{key}")
    b = json.load(open(f"{w}/B-{key}.before")); a = json.load(open(f"{w}/B-{key}.after"))
    ops = {op: a["commands"].get(op, 0) - b["commands"].get(op, 0) for op in a["commands"]}
    cmds = sum(ops.values())
    admitted = a["decisions"].get("admitted", 0) - b["decisions"].get("admitted", 0)
    errs = {k: a["errors"].get(k, 0) - b["errors"].get(k, 0) for k in a["errors"]}
    # The server's count of commands clients sent (EVALSHA/EVAL/SCRIPT/PING; not this script's
    # CONFIG/INFO, nor the GET/SET/TIME/Z* the scripts run inside).
    server = 0
    stats = {}
    for l in open(f"{w}/B-{key}.redis"):
        m = re.match(r"cmdstat_([\w|]+):calls=(\d+)", l)
        if m and m.group(1).split("|")[0] not in ("info", "config"):
            stats[m.group(1)] = int(m.group(2))
            if m.group(1).split("|")[0] in ("evalsha", "eval", "script", "ping", "evalsha_ro", "eval_ro"):
                server += int(m.group(2))
    per = cmds / max(admitted, 1)
    mark = f" (target ≤ {target}: {'meets' if per <= target else 'MISSES'})" if target else " (expected far higher: a 2-call lease)"
    opstr = ", ".join(f"{k} {int(v)}" for k, v in sorted(ops.items()) if v)
    p(f"| {key} | {limit} | {run['rps']:.0f} | {admitted / run['wall']:.1f} | {run['rejected']} | {opstr} | {cmds / run['wall']:.1f} | "
      f"{per:.4f}{mark} | {server / max(admitted, 1):.4f} | {run['other']:.2f} |")
    if any(errs.values()):
        notes.append(f"- {key}: fleet Redis errors during the run: {errs}")
    leased = {k: a["leased"].get(k, 0) - b["leased"].get(k, 0) for k in a["leased"]}
    notes.append(f"- {key}: calls granted per `rate` command {leased.get('granted', 0) / max(ops.get('rate', 0), 1):.1f} "
                 f"(granted {int(leased.get('granted', 0))}, refunded {int(leased.get('refund', 0))}, debt {int(leased.get('debt', 0))}); "
                 f"Redis server commandstats during the run: {stats}; gateways' admitted {int(admitted)}, generators' admitted {run['admitted']} over {run['wall']:.1f} s")
p("")
p("\n".join(notes))
p("")
p(f"### C. Redis frozen (SIGSTOP) from 1 s in to 2 s before the end of each frozen run, {rounds} rounds interleaved\n")
p("| run | req/s | rejected | p50 / p99 ms | degraded while frozen (per gateway) |")
p("| --- | ---: | ---: | --- | --- |")
for r in range(1, rounds + 1):
    for kind in ("calm", "frozen"):
        x = load(f"C-{kind}-r{r}")
        deg = ""
        if kind == "frozen":
            deg = str(json.load(open(f"{w}/C-frozen-r{r}.during"))["degraded"])
        p(f"| {kind} r{r} | {x['rps']:.0f} | {x['rejected']} | {x['p50']:.2f} / {x['p99']:.2f} | {deg} |")
calm = [load(f"C-calm-r{r}") for r in range(1, rounds + 1)]
frozen = [load(f"C-frozen-r{r}") for r in range(1, rounds + 1)]
p("")
p(f"p99 frozen / calm, median of rounds: {med([f['p99'] / c['p99'] for c, f in zip(calm, frozen)]):.2f}; "
  f"req/s frozen / calm: {med([f['rps'] / c['rps'] for c, f in zip(calm, frozen)]):.2f}")
fin = json.load(open(f"{w}/final.metrics"))
p(f"- redis fleet at the end: members {fin['members']}, degraded {fin['degraded']}, Redis errors {fin['errors'] or 'none'}")
print("\n".join(out))
PY
{
  printf -- "- load average (1 min) at the end of each run: "
  for f in "$WORK"/*.cpu; do printf '%s %s; ' "$(basename "$f" .cpu)" "$(cut -d' ' -f9 "$f")"; done
  echo
} >> "$WORK/result.md"
cp "$WORK/result.md" "$RESULT"
echo
cat "$RESULT"
echo
echo "(written to $RESULT)"
