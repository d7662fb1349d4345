#!/usr/bin/env python3
"""Summary of loadtest/compare/split-before-after.sh.  usage: summarize.py OUT_DIR [OUT_DIR ...]
Medians [min-max] per side and scenario, NEW/OLD ratios (of medians, and the median of the
per-round paired ratios), over all rounds and over the rounds no one else disturbed
(other processes' CPU during both runs of the pair < FOREIGN_MAX cores), callgrind Ir/call."""
import glob, json, os, re, statistics, sys

FOREIGN_MAX = float(os.environ.get("FOREIGN_MAX", "0.10"))   # cores
outs = sys.argv[1:]
med = statistics.median


def load(d):
    r = json.load(open(os.path.join(d, "report.json")))
    t = r["totals"]
    window = r["send_window_secs"] or r["duration_secs"]
    answered = t["sent"] - t["transport_errors"]
    g, s, hz = (int(x) for x in open(os.path.join(d, "cpu")).read().split())
    foreign = None
    if os.path.exists(os.path.join(d, "machine-busy")):
        busy = int(open(os.path.join(d, "machine-busy")).read())
        wall, lu, ls = (float(x) for x in open(os.path.join(d, "loadtest.time")).read().split()[-3:])
        foreign = (busy / hz - g / hz - s / hz - lu - ls) / wall
    return {
        "rps": answered / window, "cpu_us": g / hz / max(answered, 1) * 1e6,
        "stub_us": s / hz / max(answered, 1) * 1e6, "admitted_rps": t["admitted"] / window,
        "p50": t["latency"]["all"]["p50_ms"], "p99": t["latency"]["all"]["p99_ms"],
        "errors": t["errors"] + t["transport_errors"], "calls": answered, "foreign": foreign,
        "start": open(os.path.join(d, "machine-before.txt")).readline().strip(),
    }


def fmt(xs, f):
    return f"{f.format(med(xs))} [{f.format(min(xs))}–{f.format(max(xs))}]"


METRICS = [("rps", "req/s", "{:.0f}"), ("cpu_us", "CPU µs/call", "{:.2f}"),
           ("admitted_rps", "admitted/s", "{:.0f}"), ("stub_us", "stub µs/call", "{:.2f}"),
           ("p50", "p50 ms", "{:.3f}"), ("p99", "p99 ms", "{:.3f}")]

pairs = {"admitted": [], "overload": []}
for out in outs:
    for scen in pairs:
        for d in sorted(glob.glob(os.path.join(out, "runs", f"{scen}-old-r*"))):
            r = d.rsplit("-r", 1)[1]
            dn = os.path.join(out, "runs", f"{scen}-new-r{r}")
            if os.path.exists(os.path.join(d, "report.json")) and os.path.exists(os.path.join(dn, "report.json")):
                pairs[scen].append((f"{os.path.basename(out)}/r{r}", load(d), load(dn)))

print("Per round (foreign = CPU used by processes other than gateway, stub and load tool, in cores)")
for scen, ps in pairs.items():
    for name, o, n in ps:
        fo = "n/a" if o["foreign"] is None else f"{o['foreign']:.2f}"
        fn = "n/a" if n["foreign"] is None else f"{n['foreign']:.2f}"
        print(f"  {scen:<9} {name:<14} OLD {o['rps']:>7.0f} req/s {o['cpu_us']:>6.2f} µs (foreign {fo:>4}, {o['start']})"
              f"   NEW {n['rps']:>7.0f} req/s {n['cpu_us']:>6.2f} µs (foreign {fn:>4}, {n['start']})  NEW/OLD {n['rps']/o['rps']:.3f}")
print()

for subset in ["all", "clean"]:
    title = ("all rounds" if subset == "all" else
             f"clean rounds only (foreign < {FOREIGN_MAX} cores in both runs of the round; rounds without the measurement excluded)")
    print(f"== {title}")
    print(f"{'scenario':<9} {'metric':<12} {'OLD median [min–max]':>26} {'NEW median [min–max]':>26} {'NEW/OLD':>8}  paired per-round NEW/OLD  (n)")
    for scen, ps in pairs.items():
        sel = ps if subset == "all" else [p for p in ps if p[1]["foreign"] is not None and p[2]["foreign"] is not None
                                          and p[1]["foreign"] < FOREIGN_MAX and p[2]["foreign"] < FOREIGN_MAX]
        if not sel:
            print(f"{scen:<9} (no rounds)")
            continue
        for key, name, f in METRICS:
            o = [p[1][key] for p in sel]; w = [p[2][key] for p in sel]
            paired = [b / a for a, b in zip(o, w) if a]
            print(f"{scen:<9} {name:<12} {fmt(o, f):>26} {fmt(w, f):>26} {med(w) / med(o):>8.3f}  "
                  f"{med(paired):.3f} [{min(paired):.3f}–{max(paired):.3f}]  ({len(sel)})")
        print(f"{scen:<9} errors other than admission refusals: OLD {sum(p[1]['errors'] for p in sel)}, NEW {sum(p[2]['errors'] for p in sel)}")
    print()

for out in outs:
    cgdir = os.path.join(out, "cg")
    if not os.path.isdir(cgdir):
        continue
    def ir(label):
        p = os.path.join(cgdir, label, "callgrind.out")
        if not os.path.exists(p):
            return None
        for line in open(p):
            m = re.match(r"^(summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(2))
    def calls(label):
        t = json.load(open(os.path.join(cgdir, label, "report.json")))["totals"]
        return t["sent"] - t["transport_errors"], t["admitted"]
    print(f"callgrind ({out}; Ir = instructions executed, all threads)")
    per = {}
    for side in ["old", "new"]:
        for rep in [1, 2]:
            s, i, l, o = (ir(f"{side}-{m}-{rep}") for m in ("start", "idle", "load", "over"))
            if None in (s, i, l):
                continue
            c, a = calls(f"{side}-load-{rep}")
            adm = (l - i) / c
            per.setdefault((side, "admitted"), []).append(adm)
            print(f"  {side} rep{rep}: start-only {s:,}  start+idle {i:,}  admitted run {l:,} ({c} calls, {a} admitted)"
                  f"  -> (run - start+idle)/calls {adm:,.0f}  [(run - start-only)/calls {(l - s) / c:,.0f}]")
            if o is not None:
                c2, a2 = calls(f"{side}-over-{rep}")
                mix = (o - i) / c2
                refused_only = (o - i - a2 * adm) / (c2 - a2)
                per.setdefault((side, "overload"), []).append(mix)
                per.setdefault((side, "refused"), []).append(refused_only)
                print(f"  {side} rep{rep}: overload run {o:,} ({c2} calls, {a2} admitted, {c2 - a2} refused)"
                      f"  -> (run - start+idle)/calls {mix:,.0f}; a refused call alone ≈ {refused_only:,.0f}")
    for k in ["admitted", "overload", "refused"]:
        if ("old", k) in per and ("new", k) in per:
            o, n = med(per[("old", k)]), med(per[("new", k)])
            print(f"  {k:<9} Ir/call: OLD {o:,.0f}  NEW {n:,.0f}  NEW/OLD {n / o:.3f}")
    print()
