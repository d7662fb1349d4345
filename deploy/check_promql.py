#!/usr/bin/env python3
"""Checks every PromQL expression under deploy/ against the metrics Tollgate exports.

Collects the expressions of deploy/prometheus/alerts.yml and of the Grafana dashboard (panel
targets, annotation queries, template variable queries), then:

  1. every metric name they use must be one that the gateway (crates/gateway/src/metrics.rs, crates/gateway/src/fleet/mod.rs,
     crates/gateway/src/store_sync.rs) or the
     settlement consumer (crates/settlement/src/consumer.rs) registers (histograms with their
     _bucket/_sum/_count series), or Prometheus' own `up`;
  2. every selector of such a metric must select the job that scrapes its component: the
     gateway's job="tollgate" / the consumer's job="tollgate-consumer" in alerts.yml, and the
     dashboard's variables job=~"$job" / job=~"$consumer_job" (variable queries excepted).
     A consumer metric under the gateway's job would silently match nothing;
  3. every expression must parse: they are written into a throwaway rules file, Grafana
     variables replaced by plain values, and handed to `promtool check rules` (skipped, with a
     note, when promtool is not installed).

    python3 deploy/check_promql.py

Needs PyYAML (python3-yaml) for alerts.yml; standard library otherwise.
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "tollgate-dashboard.json"
# Where each component registers its metrics, and the job that scrapes it (alerts.yml, then
# the dashboard's variable).
COMPONENTS = {
    "gateway": ([REPO / "crates" / "gateway" / "src" / "metrics.rs",
                 REPO / "crates" / "gateway" / "src" / "fleet" / "mod.rs",
                 REPO / "crates" / "gateway" / "src" / "store_sync.rs"],
                'job="tollgate"', 'job=~"$job"'),
    "consumer": ([REPO / "crates" / "settlement" / "src" / "consumer.rs"],
                 'job="tollgate-consumer"', 'job=~"$consumer_job"'),
}

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan", "atan2",
            # aggregation operators: `sum by (x) (...)` puts the label list before the "("
            "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
            "bottomk", "topk", "quantile"}
TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"'                       # string literal
    r"|'(?:[^'\\]|\\.)*'"
    r"|\{[^}]*\}"                              # label matchers
    r"|\[[^\]]*\]"                             # range / subquery
    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"   # label lists
    r"|(?:\d+(?:ms|[smhdwy]))+\b"               # duration (offset 1h, @ modifiers aside)
    r"|\d+(?:\.\d+)?(?:e[+-]?\d+)?"            # number
    r"|([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?"     # identifier, maybe a function call
)


def exported_metrics() -> dict:
    """Series name -> component ("gateway", "consumer"); `up` -> None (any job)."""
    owner = {}
    for component, (sources, _, _) in COMPONENTS.items():
        names = set()
        for source in sources:
            found = set(re.findall(r'"(tollgate_[a-z0-9_]+)"', source.read_text(encoding="utf-8")))
            if not found:
                sys.exit(f"no metric names found in {source}")
            names |= found
        for n in names:
            for series in (n, n + "_bucket", n + "_sum", n + "_count"):
                if owner.get(series, component) != component:
                    sys.exit(f"{series} is registered by both the gateway and the consumer")
                owner[series] = component
    owner["up"] = None
    return owner


SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")


def job_problems(expr: str, owner: dict, want: int) -> list:
    """Selectors of a component's metric that do not select its job. `want` picks the alerts'
    (1) or the dashboard's (2) matcher of COMPONENTS."""
    problems = []
    for m in SELECTOR.finditer(expr):
        name, matchers = m.group(1), m.group(2) or ""
        component = owner.get(name)
        if component is None or expr[m.end():m.end() + 1] == "(":
            continue
        expected = COMPONENTS[component][want]
        jobs = re.findall(r'job\s*(=~|!=|!~|=)\s*"([^"]*)"', matchers)
        found = [f"job{op}\"{value}\"" for op, value in jobs]
        if found != [expected]:
            problems.append(f"{name} ({component}) must select {expected}, "
                            f"not {', '.join(found) or 'any job'}")
    return problems


def metric_names(expr: str) -> set:
    found = set()
    for m in TOKEN.finditer(expr):
        name, call = m.group(1), m.group(2)
        if name and not call and name.lower() not in KEYWORDS:
            found.add(name)
    return found


def grafana_to_promql(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = expr.replace("$__range", "1h")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def collect() -> list:
    """(where, PromQL, the expression as written, which job matchers it must use: 1 for
    alerts.yml, 2 for the dashboard, None for variable queries) for every expression."""
    out = []
    for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            out.append((f"{ALERTS.name}: {name}", rule["expr"], rule["expr"], 1))
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash["panels"]):
        for t in p.get("targets", []):
            out.append((f"{DASHBOARD.name}: panel {p['title']!r} {t['refId']}",
                        grafana_to_promql(t["expr"]), t["expr"], 2))
    for a in dash["annotations"]["list"]:
        if "expr" in a:
            out.append((f"{DASHBOARD.name}: annotation {a['name']!r}",
                        grafana_to_promql(a["expr"]), a["expr"], 2))
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q.strip())
        if not m:
            sys.exit(f"{DASHBOARD.name}: variable {v['name']}: unsupported query {q!r}")
        out.append((f"{DASHBOARD.name}: variable {v['name']!r}",
                    grafana_to_promql(m.group(1)), m.group(1), None))
    return out


def main() -> int:
    owner = exported_metrics()
    collected = collect()
    exprs = [(where, expr) for where, expr, _, _ in collected]
    bad = 0
    for where, expr, written, want in collected:
        names = metric_names(expr)
        if not names:
            print(f"{where}: names no metric", file=sys.stderr)
            bad += 1
        for n in sorted(names - owner.keys()):
            print(f"{where}: {n} is not a metric the gateway or the consumer exports",
                  file=sys.stderr)
            bad += 1
        if want is not None:
            for problem in job_problems(written, owner, want):
                print(f"{where}: {problem}", file=sys.stderr)
                bad += 1
    print(f"metric names and jobs: {len(exprs)} expressions checked, {bad} problems")

    promtool = shutil.which("promtool")
    if not promtool:
        print("syntax: SKIPPED (promtool not installed: apt-get install prometheus)")
        return 1 if bad else 0
    rules = {"groups": [{"name": "check", "rules": [
        {"record": f"check:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout + r.stderr, file=sys.stderr)
        for m in re.finditer(r"expr_(\d+)", r.stdout + r.stderr):
            print(f"  expr_{m.group(1)} is {exprs[int(m.group(1))][0]}", file=sys.stderr)
        bad += 1
    print(f"syntax: {len(exprs)} expressions {'parse' if r.returncode == 0 else 'FAILED'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
