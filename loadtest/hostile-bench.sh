#!/usr/bin/env bash
# A good client's latency and the gateway's memory, with and without a flood of strangers'
# uploads: 100 clients at a time, each declaring a 10 MiB body under a SecretId nobody has (and
# a timestamp long expired), sending a megabyte of it and holding the connection, reconnecting
# PAUSE seconds after each close (so about ATTACKERS connections are always trying). The good client is the project's load tool, open loop at RATE
# calls/s of signed SegmentPortraitPic calls (admitted), against the release gateway and the
# stub. Rounds alternate calm / attacked; the summary gives, per phase, the median over rounds
# of the good client's p50 and p99, the gateway's peak RSS above its calm baseline, and how long
# the strangers' connections stayed open.
#
#   loadtest/hostile-bench.sh            # ROUNDS=3 DURATION=15 RATE=500 ATTACKERS=100 PAUSE=1
#   PAUSE=0.1 loadtest/hostile-bench.sh  # the same strangers, ten times as eager
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-15}
RATE=${RATE:-500}
ATTACKERS=${ATTACKERS:-100}
PAUSE=${PAUSE:-1}

echo "== building (release)"
cargo build --release -q
cargo build --release -q --manifest-path loadtest/Cargo.toml
TOLLGATE=$ROOT/target/release/tollgate
LOADTEST=$ROOT/loadtest/target/release/tollgate-loadtest

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

. loadtest/lib.sh
STUB=$(port); TG=$(port); TG_ADMIN=$(port)
mkdir -p "$WORK/config"
cp config/catalog.toml "$WORK/config/"
open_accounts 1 200000000000 open '["bda"]' > "$WORK/config/entitlements.toml"
credentials 1 200000000000 AKIDhostileOpen hostile-open-key- > "$WORK/config/credentials.toml"
cat > "$WORK/config/tollgate.toml" <<TOML
[listen]
api = "127.0.0.1:$TG"
admin = "127.0.0.1:$TG_ADMIN"
[upstream.default]
url = "http://127.0.0.1:$STUB"
[metering]
sink = "spool"
gateway_id = "gw-hostile"
spool_dir = "$WORK/spool"
batch_dir = "$WORK/batches"
[log]
level = "error"
TOML
cat > "$WORK/good.toml" <<TOML
name = "good-client"
description = "signed SegmentPortraitPic calls, admitted, open loop"
duration_secs = $DURATION
rate = $RATE

[[stream]]
name = "good"
secret_id = "AKIDhostileOpen001"
service = "bda"
action = "SegmentPortraitPic"
weight = 1
[stream.headers]
X-Stub-Image-Bytes = "0"
TOML
cat > "$WORK/attack.py" <<'PY'
import asyncio, sys, time
port, n, seconds, out, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], float(sys.argv[5])
head = ("POST / HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        "x-tc-action: GeneralBasicOCR\r\nx-tc-timestamp: 1\r\n"
        "authorization: TC3-HMAC-SHA256 Credential=AKIDnobody/1970-01-01/ocr/tc3_request, "
        "SignedHeaders=content-type;host, Signature=" + "0" * 64 + "\r\n"
        "content-length: 10485760\r\n\r\n").encode()
mib = b"A" * (1 << 20)
longest, conns = 0.0, 0
async def one(end):
    global longest, conns
    while time.monotonic() < end:
        t = time.monotonic()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1); continue
        conns += 1
        try:
            w.write(head); w.write(mib); await w.drain()
        except OSError:
            pass
        try:
            while await r.read(65536):
                pass
        except OSError:
            pass
        longest = max(longest, time.monotonic() - t)
        w.close()
        await asyncio.sleep(pause)
async def main():
    end = time.monotonic() + seconds
    await asyncio.gather(*(one(end) for _ in range(n)))
    open(out, "w").write(f"{conns} {longest:.3f}\n")
asyncio.run(main())
PY

"$TOLLGATE" stub --listen "127.0.0.1:$STUB" >/dev/null 2>&1 & PIDS+=($!)
"$TOLLGATE" gateway --config "$WORK/config/tollgate.toml" >/dev/null 2>&1 & GW=$!; PIDS+=($GW)
wait_port "$STUB"; wait_port "$TG"
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$GW/status"; }

# Warm up.
"$LOADTEST" --scenario "$WORK/good.toml" --target "127.0.0.1:$TG" --config-dir "$WORK/config" \
  --duration 3 -q >/dev/null
BASE=$(rss_kib)
echo "== gateway RSS after warm-up: $((BASE / 1024)) MiB; $ROUNDS rounds of ${DURATION}s, calm and attacked"

for r in $(seq 1 "$ROUNDS"); do
  for phase in calm attacked; do
    peak_file="$WORK/peak-$phase-$r"; echo "$BASE" > "$peak_file"
    ( while sleep 0.1; do v=$(rss_kib); [ "$v" -gt "$(cat "$peak_file")" ] && echo "$v" > "$peak_file"; done ) &
    SAMPLER=$!
    if [ "$phase" = attacked ]; then
      python3 "$WORK/attack.py" "$TG" "$ATTACKERS" "$DURATION" "$WORK/attack-$r" "$PAUSE" & ATTACK=$!
    fi
    "$LOADTEST" --scenario "$WORK/good.toml" --target "127.0.0.1:$TG" --config-dir "$WORK/config" \
      -q --report-json "$WORK/report-$phase-$r.json" >/dev/null
    [ "$phase" = attacked ] && wait "$ATTACK"
    kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null || true
  done
done

python3 - "$WORK" "$ROUNDS" "$BASE" <<'PY'
import json, statistics, sys
work, rounds, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def med(xs): return statistics.median(xs)
print(f"{'phase':9} {'p50 ms':>8} {'p99 ms':>8} {'admitted/s':>11} {'errors':>7} {'peak RSS +MiB':>14}  strangers")
for phase in ("calm", "attacked"):
    p50, p99, rate, errs, peak = [], [], [], [], []
    for r in range(1, rounds + 1):
        rep = json.load(open(f"{work}/report-{phase}-{r}.json"))
        t = rep["totals"]
        p50.append(t["latency"]["admitted"]["p50_ms"]); p99.append(t["latency"]["admitted"]["p99_ms"])
        rate.append(t["admitted"] / rep["send_window_secs"]); errs.append(t["sent"] - t["admitted"])
        peak.append((int(open(f"{work}/peak-{phase}-{r}").read()) - base) / 1024)
    strangers = ""
    if phase == "attacked":
        runs = [open(f"{work}/attack-{r}").read().split() for r in range(1, rounds + 1)]
        strangers = f"{med([int(c) for c, _ in runs]):.0f} connections/round, longest open {max(float(l) for _, l in runs):.3f} s"
    print(f"{phase:9} {med(p50):8.2f} {med(p99):8.2f} {med(rate):11.0f} {med(errs):7.0f} {med(peak):14.1f}  {strangers}")
    print(f"{'':9} rounds: p99 " + " ".join(f"{x:.2f}" for x in p99))
PY
