#!/usr/bin/env python3
"""Summarises the side-by-side run: requests/s, p50/p99 and CPU per request of each target and
mode (medians over the rounds), and the ratios Tollgate/nginx and Tollgate/ceiling (the median
of the per-round ratios: each round ran the three targets back to back)."""
import json
import os
import statistics
import sys

work, cores, duration, connections = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 1
targets = [("tollgate", "Tollgate"), ("nginx", "nginx limit_req"), ("ceiling", "pass-through (ceiling)")]
FIELDS = ["rps", "p50", "p99", "admitted_rps", "cpu_us", "stub_cpu_us"]


def load(label):
    path = os.path.join(work, label + ".json")
    if not os.path.exists(path):
        print(open(os.path.join(work, label + ".txt")).read())
        sys.exit(f"no report for {label}")
    r = json.load(open(path))
    t = r["totals"]
    window = r["send_window_secs"] or r["duration_secs"]
    answered = t["sent"] - t["transport_errors"]  # "sent" already excludes skipped calls
    cpu = [int(x) for x in open(os.path.join(work, label + ".cpu")).read().split()]
    ticks, hz = cpu[0], cpu[1]
    stub_ticks = cpu[2] if len(cpu) > 2 else 0
    return {
        "cpu_us": ticks / hz / max(t["sent"], 1) * 1e6,
        # The stub backend's CPU per call, to tell a proxy's own cost from what it makes the
        # backend spend (connections, packets); zero when a target refuses every call.
        "stub_cpu_us": stub_ticks / hz / max(t["sent"], 1) * 1e6,
        "rps": answered / window,
        "p50": t["latency"]["all"]["p50_ms"],
        "p99": t["latency"]["all"]["p99_ms"],
        "admitted_rps": t["admitted"] / window,
        "errors": t["errors"] + t["transport_errors"],
    }


med = statistics.median
print(
    f"\nSide-by-side: {cores} cores, {duration} s per run, {rounds} interleaved rounds,"
    f" {connections} connections, one machine (medians over the rounds)\n"
)
print(f"{'mode':<9} {'target':<24} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'admitted/s':>11} {'CPU us/req':>11} {'stub us/req':>12} {'errors':>7}")
runs = {}
for mode in ["admitted", "overload"]:
    for key, name in targets:
        rs = [load(f"{key}-{mode}-r{k}") for k in range(1, rounds + 1)]
        runs[(mode, key)] = rs
        m = {f: med(r[f] for r in rs) for f in FIELDS}
        errors = sum(r["errors"] for r in rs)
        print(f"{mode:<9} {name:<24} {m['rps']:>11.0f} {m['p50']:>8.3f} {m['p99']:>8.3f} {m['admitted_rps']:>11.0f} {m['cpu_us']:>11.1f} {m['stub_cpu_us']:>12.1f} {errors:>7}")
print()
for mode in ["admitted", "overload"]:
    tg, ng, ce = (runs[(mode, k)] for k in ("tollgate", "nginx", "ceiling"))
    vs_nginx = [t["rps"] / n["rps"] for t, n in zip(tg, ng)]
    vs_ceiling = [t["rps"] / c["rps"] for t, c in zip(tg, ce)]
    p99 = [t["p99"] / n["p99"] for t, n in zip(tg, ng)]
    each = lambda xs: ", ".join(f"{x:.2f}" for x in xs)
    print(
        f"{mode:<9} Tollgate/nginx {med(vs_nginx):.2f}x requests/s (rounds: {each(vs_nginx)}), p99 {med(p99):.2f}x;"
        f" Tollgate/ceiling {med(vs_ceiling):.2f}x (rounds: {each(vs_ceiling)});"
        f" CPU per request Tollgate {med(t['cpu_us'] for t in tg):.1f} us,"
        f" nginx {med(n['cpu_us'] for n in ng):.1f} us, ceiling {med(c['cpu_us'] for c in ce):.1f} us"
    )
