#!/usr/bin/env python3
"""Summarises the side-by-side run: requests/s, p50/p99 per target and mode, and the ratios."""
import json
import os
import sys

work, cores, duration, connections = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
targets = [("tollgate", "Tollgate"), ("nginx", "nginx limit_req"), ("ceiling", "pass-through (ceiling)")]


def load(label):
    path = os.path.join(work, label + ".json")
    if not os.path.exists(path):
        print(open(os.path.join(work, label + ".txt")).read())
        sys.exit(f"no report for {label}")
    r = json.load(open(path))
    t = r["totals"]
    window = r["send_window_secs"] or r["duration_secs"]
    answered = t["sent"] - t["transport_errors"]  # "sent" already excludes skipped calls
    ticks, hz = (int(x) for x in open(os.path.join(work, label + ".cpu")).read().split())
    return {
        "cpu_us": ticks / hz / max(t["sent"], 1) * 1e6,
        "rps": answered / window,
        "p50": t["latency"]["all"]["p50_ms"],
        "p99": t["latency"]["all"]["p99_ms"],
        "admitted_rps": t["admitted"] / window,
        "rejected": t["rejected"],
        "errors": t["errors"] + t["transport_errors"],
    }


rows = []
print(f"\nSide-by-side: {cores} cores, {duration} s per run, {connections} connections, one machine\n")
print(f"{'mode':<9} {'target':<24} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'admitted/s':>11} {'CPU us/req':>11} {'errors':>7}")
results = {}
for mode in ["admitted", "overload"]:
    for key, name in targets:
        m = load(f"{key}-{mode}")
        results[(mode, key)] = m
        print(f"{mode:<9} {name:<24} {m['rps']:>11.0f} {m['p50']:>8.3f} {m['p99']:>8.3f} {m['admitted_rps']:>11.0f} {m['cpu_us']:>11.1f} {m['errors']:>7}")
print()
for mode in ["admitted", "overload"]:
    tg, ng, ce = (results[(mode, k)] for k in ("tollgate", "nginx", "ceiling"))
    print(
        f"{mode:<9} Tollgate/nginx {tg['rps'] / ng['rps']:.2f}x requests/s, p99 {tg['p99'] / ng['p99']:.2f}x;"
        f" Tollgate/ceiling {tg['rps'] / ce['rps']:.2f}x requests/s;"
        f" CPU per request Tollgate {tg['cpu_us']:.1f} us, nginx {ng['cpu_us']:.1f} us, ceiling {ce['cpu_us']:.1f} us"
    )
