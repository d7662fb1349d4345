#!/usr/bin/env python3
"""Checks that the pieces of the metering pipeline under deploy/ agree with each other.

Several settings must match across files that no single tool reads together:

  Kubernetes (deploy/kubernetes/):
    - tollgate.toml ships usage through the spool to NATS; the spool is on the StatefulSet's
      per-replica PersistentVolume (a volumeClaimTemplate), not on an emptyDir or the image;
    - TOLLGATE_GATEWAY_ID comes from the pod name (downward API), so ids are unique per
      replica and travel with its volume;
    - terminationGracePeriodSeconds covers preStop + 2 x shutdown.drain_timeout_seconds (the
      API drains, then the shipper ships the tail);
    - the consumer's --nats-url / --nats-stream equal metering.nats_url / nats_stream, its
      admin port is the one its Service and ServiceMonitor scrape, its PostgreSQL Secret
      exists with the key it reads;
    - each ServiceMonitor selects exactly the Service whose name is the job the alerts expect
      ("tollgate", "tollgate-consumer"), and the gateway Services never select consumer pods;
    - every manifest in the directory is listed in kustomization.yaml.
  systemd (deploy/systemd/):
    - tollgate.toml ships through a spool under the unit's StateDirectory to NATS;
    - tollgate.service sets TOLLGATE_GATEWAY_ID; TimeoutStopSec covers 2 x the drain timeout;
    - tollgate-consumer.env's TOLLGATE_NATS_URL equals metering.nats_url, and the consumer
      unit's --nats-stream equals metering.nats_stream.
  NATS (deploy/nats/tollgate-usage-stream.json):
    - the stream is the one the gateways publish to, with the subjects and the duplicate
      window the gateway itself would create it with (crates/usage/src/stream.rs), file storage
      and three replicas.

    python3 deploy/check_wiring.py

Needs PyYAML (python3-yaml) and Python >= 3.11 (tomllib).
"""

import json
import re
import sys
import tomllib
from pathlib import Path, PurePosixPath

import yaml

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
STREAM = DEPLOY / "nats" / "tollgate-usage-stream.json"
SHIP_RS = REPO / "crates" / "usage" / "src" / "stream.rs"

problems = []


def check(ok: bool, message: str) -> None:
    if not ok:
        problems.append(message)


def docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def one(path: Path, kind: str, name: str = None) -> dict:
    found = [d for d in docs(path) if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        sys.exit(f"{path.name}: expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def under(path: str, directory: str) -> bool:
    p, d = PurePosixPath(path), PurePosixPath(directory)
    return p.is_absolute() and (p == d or d in p.parents)


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def arg(args: list, flag: str, default=None):
    return args[args.index(flag) + 1] if flag in args else default


def metering(path: Path) -> dict:
    m = tomllib.loads(path.read_text(encoding="utf-8")).get("metering", {})
    check(m.get("sink", "spool") == "spool", f"{path}: metering.sink must be \"spool\"")
    check(m.get("ship_to") == "nats", f"{path}: metering.ship_to must be \"nats\" in production")
    check("path" not in m, f"{path}: metering.path belongs to the file sink; drop it")
    check(str(m.get("nats_url", "")).startswith("nats://"),
          f"{path}: metering.nats_url must be set (nats://...)")
    return m


def drain_seconds(path: Path) -> int:
    return tomllib.loads(path.read_text(encoding="utf-8")).get("shutdown", {}).get(
        "drain_timeout_seconds", 30)


def gateway_id_from_pod_name(env: list) -> bool:
    by_name = {e["name"]: e for e in env}

    def pod_name(e):
        return e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name"

    gid = by_name.get("TOLLGATE_GATEWAY_ID")
    if gid is None:
        return False
    if pod_name(gid):
        return True
    refs = re.findall(r"\$\((\w+)\)", gid.get("value", ""))
    return any(r in by_name and pod_name(by_name[r]) for r in refs)


def kubernetes(stream_name_seen: set) -> None:
    m = metering(K8S / "tollgate.toml")
    stream = m.get("nats_stream", "TOLLGATE_USAGE")
    stream_name_seen.add(stream)
    sts = one(K8S / "statefulset.yaml", "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    gw = next(c for c in pod["containers"] if c["name"] == "tollgate")
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    spool = m.get("spool_dir", "data/spool")
    if not PurePosixPath(spool).is_absolute():
        spool = str(PurePosixPath(gw.get("workingDir", "/")) / spool)
    on_claim = [v for v in gw.get("volumeMounts", [])
                if v["name"] in claims and under(spool, v["mountPath"])]
    check(bool(on_claim), f"kubernetes: metering.spool_dir {spool} is not on a volumeClaimTemplate "
                          f"mount of the StatefulSet ({sorted(claims)})")
    check(gateway_id_from_pod_name(gw.get("env", [])),
          "kubernetes: the gateway container must set TOLLGATE_GATEWAY_ID from metadata.name")
    pre_stop = gw.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    drain = drain_seconds(K8S / "tollgate.toml")
    check(grace > pre_stop + 2 * drain,
          f"kubernetes: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} + "
          f"2 x drain_timeout_seconds {drain}")

    dep = one(K8S / "consumer-deployment.yaml", "Deployment")
    cpod = dep["spec"]["template"]["spec"]
    con = cpod["containers"][0]
    args = con["args"]
    check(args[:1] == ["consumer"], "kubernetes: the consumer container must run `consumer`")
    check(arg(args, "--nats-url") == m["nats_url"],
          f"kubernetes: consumer --nats-url {arg(args, '--nats-url')} != metering.nats_url "
          f"{m['nats_url']}")
    check(arg(args, "--nats-stream", "TOLLGATE_USAGE") == stream,
          f"kubernetes: consumer --nats-stream != metering.nats_stream {stream}")
    admin = arg(args, "--admin-listen", "127.0.0.1:19091")
    check(not admin.startswith("127."), "kubernetes: the consumer's --admin-listen must not be "
                                        "loopback (Prometheus scrapes the pod IP)")
    ports = {p["name"]: p["containerPort"] for p in con.get("ports", [])}
    check(ports.get("admin") == int(admin.rsplit(":", 1)[1]),
          f"kubernetes: consumer containerPort admin {ports.get('admin')} != --admin-listen {admin}")
    pg = next((e for e in con.get("env", []) if e["name"] == "TOLLGATE_POSTGRES"), None)
    ref = (pg or {}).get("valueFrom", {}).get("secretKeyRef")
    check(ref is not None, "kubernetes: the consumer must take TOLLGATE_POSTGRES from a Secret")
    if ref:
        secret = one(K8S / "consumer-secret.yaml", "Secret", ref["name"])
        data = {**secret.get("stringData", {}), **secret.get("data", {})}
        check(ref["key"] in data, f"kubernetes: Secret {ref['name']} has no key {ref['key']}")
    check(selects(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"]),
          "kubernetes: the consumer Deployment's selector does not match its pods")

    # Services and ServiceMonitors: job label = Service name.
    services = docs(K8S / "service.yaml") + docs(K8S / "consumer-service.yaml")
    gw_labels = sts["spec"]["template"]["metadata"]["labels"]
    con_labels = dep["spec"]["template"]["metadata"]["labels"]
    for s in services:
        sel = s["spec"]["selector"]
        check(not (selects(sel, gw_labels) and selects(sel, con_labels)),
              f"kubernetes: Service {s['metadata']['name']} selects gateway and consumer pods alike")
    consumer_svc = next(s for s in services if s["metadata"]["name"] == "tollgate-consumer")
    check(selects(consumer_svc["spec"]["selector"], con_labels),
          "kubernetes: Service tollgate-consumer does not select the consumer pods")
    check(any(p["name"] == "admin" and p["targetPort"] in ("admin", ports.get("admin"))
              for p in consumer_svc["spec"]["ports"]),
          "kubernetes: Service tollgate-consumer has no port admin to the consumer's admin port")
    want = {"tollgate": "tollgate", "tollgate-consumer": "tollgate-consumer"}
    for sm in docs(K8S / "servicemonitor.yaml"):
        picked = sorted(s["metadata"]["name"] for s in services
                        if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"]))
        expected = want.get(sm["metadata"]["name"])
        check(picked == [expected],
              f"kubernetes: ServiceMonitor {sm['metadata']['name']} selects Services {picked}, "
              f"expected [{expected}] (the job label the alerts select)")
    check(sorted(want) == sorted(sm["metadata"]["name"] for sm in docs(K8S / "servicemonitor.yaml")),
          "kubernetes: servicemonitor.yaml must hold the ServiceMonitors tollgate and tollgate-consumer")

    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    check(on_disk <= listed, f"kubernetes: not in kustomization.yaml: {sorted(on_disk - listed)}")
    check(listed <= on_disk, f"kubernetes: kustomization.yaml lists missing files: {sorted(listed - on_disk)}")


def unit_settings(path: Path) -> dict:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def seconds(value: str) -> int:
    m = re.fullmatch(r"(\d+)(s|min)?", value.strip())
    if not m:
        sys.exit(f"cannot read the duration {value!r}")
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def systemd(stream_name_seen: set) -> None:
    m = metering(SYSTEMD / "tollgate.toml")
    stream = m.get("nats_stream", "TOLLGATE_USAGE")
    stream_name_seen.add(stream)
    unit = unit_settings(SYSTEMD / "tollgate.service")
    state = unit.get("StateDirectory", [""])[-1].split()[0]
    check(under(m.get("spool_dir", ""), f"/var/lib/{state}"),
          f"systemd: metering.spool_dir {m.get('spool_dir')} must be absolute, under the unit's "
          f"StateDirectory /var/lib/{state}")
    check(any(v.startswith("TOLLGATE_GATEWAY_ID=") for v in unit.get("Environment", [])),
          "systemd: tollgate.service must set Environment=TOLLGATE_GATEWAY_ID=...")
    drain = drain_seconds(SYSTEMD / "tollgate.toml")
    stop = seconds(unit.get("TimeoutStopSec", ["90"])[-1])
    check(stop > 2 * drain, f"systemd: TimeoutStopSec {stop} must exceed 2 x drain_timeout_seconds {drain}")

    consumer = unit_settings(SYSTEMD / "tollgate-consumer.service")
    exec_start = consumer["ExecStart"][-1].split()
    check(arg(exec_start, "--nats-stream", "TOLLGATE_USAGE") == stream,
          f"systemd: the consumer's --nats-stream != metering.nats_stream {stream}")
    env = dict(line.split("=", 1) for line in (SYSTEMD / "tollgate-consumer.env").read_text().splitlines()
               if line.strip() and not line.startswith("#"))
    check(env.get("TOLLGATE_NATS_URL") == m["nats_url"],
          f"systemd: TOLLGATE_NATS_URL {env.get('TOLLGATE_NATS_URL')} in tollgate-consumer.env != "
          f"metering.nats_url {m['nats_url']}")
    check("TOLLGATE_POSTGRES" in env, "systemd: tollgate-consumer.env must set TOLLGATE_POSTGRES")
    for var in re.findall(r"\$\{(\w+)\}", consumer["ExecStart"][-1]):
        check(var in env or any(v.startswith(var + "=") for v in consumer.get("Environment", [])),
              f"systemd: ExecStart of tollgate-consumer.service uses ${{{var}}}, set nowhere")


def nats(stream_name_seen: set) -> None:
    s = json.loads(STREAM.read_text(encoding="utf-8"))
    check({s["name"]} == stream_name_seen,
          f"nats: the stream {s['name']} is not metering.nats_stream {sorted(stream_name_seen)}")
    check(s.get("storage") == "file", "nats: the stream must use file storage")
    check(s.get("num_replicas", 1) >= 3, "nats: the stream must have 3 replicas (R3)")
    ship = SHIP_RS.read_text(encoding="utf-8")
    subjects = re.search(r"subjects:\s*vec!\[([^\]]*)\]", ship)
    window = re.search(r"duplicate_window:\s*Duration::from_secs\((\d+)\)", ship)
    if subjects and window:
        code_subjects = re.findall(r'"([^"]+)"', subjects.group(1))
        check(sorted(s["subjects"]) == sorted(code_subjects),
              f"nats: subjects {s['subjects']} != those the gateway creates {code_subjects}")
        check(s.get("duplicate_window") == int(window.group(1)) * 10**9,
              f"nats: duplicate_window must be the gateway's {window.group(1)} s, in nanoseconds")
    else:
        # A check that cannot find what it compares must fail, not pass quietly.
        check(False, f"nats: cannot find the stream config (subjects, duplicate_window) in {SHIP_RS}")


def main() -> int:
    seen = set()
    kubernetes(seen)
    systemd(seen)
    nats(seen)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"pipeline wiring: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
