#!/usr/bin/env bash
# The gateway's throughput and CPU per request with metering off, on the durable spool, and on
# the plain file sink: the admitted scenario of side-by-side.sh against one fresh gateway per
# run, in the order given, then the median of each sink. Interleave runs to cancel out the
# drift of a shared machine:
#
#   loadtest/metering-ab.sh off spool file off spool file off spool file off spool file off spool file
#
# DURATION (s, default 8) per run. Needs release builds (cargo build --release, and
# cargo build --release --manifest-path loadtest/Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- off spool file off spool file off spool file
OUT=$(mktemp)
WORK=$(mktemp -d)
. loadtest/lib.sh
STUB=$(port)
target/release/tollgate stub --listen 127.0.0.1:$STUB >/dev/null 2>&1 & STUB_PID=$!
mkdir -p $WORK/config && cp config/catalog.toml $WORK/config/
open_accounts 8 200000000000 open '["bda"]' > $WORK/config/entitlements.toml
credentials 8 200000000000 AKIDsbsOpen side-by-side-open-key- > $WORK/config/credentials.toml
{ printf 'name = "admitted"\ndescription = "x"\nduration_secs = %s\n\n' "${DURATION:-10}"; segment_streams 8 open AKIDsbsOpen 8; } > $WORK/admitted.toml
for sink in "$@"; do
  TG=$(port); AD=$(port)
  case $sink in
    off) M='sink = "off"';;
    file) M="sink = \"file\"
path = \"$WORK/usage-$TG.jsonl\"";;
    spool) M="sink = \"spool\"
spool_dir = \"$WORK/spool-$TG\"
batch_dir = \"$WORK/batches-$TG\"";;
  esac
  printf '[listen]\napi = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n[upstream.default]\nurl = "http://127.0.0.1:%s"\n[metering]\n%s\n[log]\nlevel = "warn"\n' $TG $AD $STUB "$M" > $WORK/config/tollgate.toml
  target/release/tollgate gateway --config $WORK/config/tollgate.toml >/dev/null 2>&1 & GW=$!
  sleep 0.5
  C0=$(awk '{print $14+$15}' /proc/$GW/stat)
  loadtest/target/release/tollgate-loadtest --scenario $WORK/admitted.toml --target 127.0.0.1:$TG --config-dir $WORK/config -q --report-json $WORK/r.json >/dev/null 2>&1 || true
  C1=$(awk '{print $14+$15}' /proc/$GW/stat)
  python3 -c "import json,os;r=json.load(open('$WORK/r.json'));t=r['totals'];w=r['send_window_secs'];hz=os.sysconf('SC_CLK_TCK');print('$sink', round(t['sent']/w), 'req/s p50', t['latency']['all']['p50_ms'], 'p99', t['latency']['all']['p99_ms'], 'cpu_us_per_req', round(($C1-$C0)/hz/t['sent']*1e6,2))" | tee -a "$OUT"
  kill -TERM $GW; wait $GW 2>/dev/null || true
done
kill $STUB_PID; rm -rf $WORK
python3 - "$OUT" <<'PY'
import collections, statistics, sys
rps, cpu = collections.defaultdict(list), collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    rps[f[0]].append(int(f[1]))
    cpu[f[0]].append(float(f[-1]))
print()
for sink in rps:
    ratio = statistics.median(rps[sink]) / statistics.median(rps["off"]) if "off" in rps else float("nan")
    print(f"{sink:<6} median {statistics.median(rps[sink]):>7.0f} req/s ({ratio:.3f} of off), median CPU {statistics.median(cpu[sink]):.1f} us/request, runs {sorted(rps[sink])}")
PY
rm -f "$OUT"
