#!/usr/bin/env bash
# Validates everything under deploy/ that can be checked without a cluster or a running host.
#
#   bash deploy/validate.sh
#
# Needs: python3 >= 3.11 with PyYAML (python3-yaml), promtool (Debian: apt-get install
# prometheus). Uses when present (a step is reported SKIP otherwise): kubectl (kustomize
# build), kubernetes-validate (pip; schema validation of the built manifests),
# systemd-analyze, and a tollgate binary for `tollgate check-config` on the shipped configs
# and the consumer's flags: $TOLLGATE_BIN, else the newer of target/release and target/debug,
# else tollgate on PATH. Exits non-zero if any step fails.
set -uo pipefail

cd "$(dirname "$0")/.."
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step() { # step NAME COMMAND...
  local name=$1
  shift
  if out=$("$@" 2>&1); then
    echo "ok    $name"
  else
    echo "FAIL  $name"
    echo "$out" | sed 's/^/      /'
    failed=1
  fi
}
skip() { echo "SKIP  $1 ($2)"; }

# --- Prometheus ---------------------------------------------------------------------------------
if command -v promtool >/dev/null; then
  step "promtool check config deploy/prometheus/prometheus.yml" \
    promtool check config deploy/prometheus/prometheus.yml
  step "promtool check rules deploy/prometheus/alerts.yml" \
    promtool check rules deploy/prometheus/alerts.yml
  step "promtool test rules deploy/prometheus/alerts_test.yml" \
    promtool test rules deploy/prometheus/alerts_test.yml
  # The commented kubernetes_sd_configs jobs of prometheus.yml, uncommented in place of the
  # static ones, must be a valid config too. Debian's promtool is built without Kubernetes
  # discovery and rejects any kubernetes_sd_configs: then they are only parsed.
  printf 'scrape_configs:\n  - job_name: probe\n    kubernetes_sd_configs:\n      - role: pod\n' \
    >"$tmp/k8s-sd-probe.yml"
  probe=$(promtool check config "$tmp/k8s-sd-probe.yml" 2>&1 || true)
  sd_check=promtool
  if grep -q 'kubernetes_sd_configs not found' <<<"$probe"; then
    sd_check=parse-only
    echo "NOTE  this promtool has no Kubernetes service discovery: the commented jobs are only parsed"
  fi
  step "prometheus.yml with its commented Kubernetes jobs enabled ($sd_check)" \
    python3 - "$tmp" "$sd_check" <<'EOF'
import pathlib, re, subprocess, sys, yaml
path = pathlib.Path("deploy/prometheus/prometheus.yml")
lines = path.read_text().splitlines()
start = next(i for i, l in enumerate(lines) if re.match(r"^  # - job_name:", l))
block = []
for l in lines[start:]:
    if l.startswith("  # "):
        block.append(l[4:])
    elif l.rstrip() == "  #":
        block.append("")
    else:
        break
jobs = yaml.safe_load("\n".join(block))
assert [j["job_name"] for j in jobs] == ["tollgate", "tollgate-consumer"], jobs
for j in jobs:
    keep = [r["regex"] for r in j["relabel_configs"] if r.get("action") == "keep"]
    assert "admin" in keep and ("gateway" in keep) != ("consumer" in keep), (j["job_name"], keep)
if sys.argv[2] != "promtool":
    sys.exit(0)
cfg = yaml.safe_load(path.read_text())
cfg["scrape_configs"] = jobs
cfg["rule_files"] = [str(path.parent.resolve() / f) for f in cfg["rule_files"]]
out = pathlib.Path(sys.argv[1]) / "prometheus-sd.yml"
out.write_text(yaml.safe_dump(cfg))
r = subprocess.run(["promtool", "check", "config", str(out)], capture_output=True, text=True)
print(r.stdout + r.stderr)
sys.exit(r.returncode)
EOF
else
  skip "promtool" "not installed: apt-get install prometheus"
  failed=1
fi
step "PromQL metric names, jobs and syntax (deploy/check_promql.py)" python3 deploy/check_promql.py

# --- Grafana ------------------------------------------------------------------------------------
step "dashboard is valid JSON" python3 -m json.tool deploy/grafana/tollgate-dashboard.json

# --- The pipeline: settings that must agree across files ----------------------------------------
step "pipeline wiring (deploy/check_wiring.py)" python3 deploy/check_wiring.py
step "NATS stream definition is valid JSON" python3 -m json.tool deploy/nats/tollgate-usage-stream.json

# --- Kubernetes ---------------------------------------------------------------------------------
step "configmap.yaml is up to date with config/" python3 deploy/kubernetes/render-configmap.py --check
step "Kubernetes YAML parses" python3 -c '
import sys, yaml, pathlib
for p in sorted(pathlib.Path("deploy/kubernetes").glob("*.yaml")):
    for doc in yaml.safe_load_all(p.read_text()):
        assert doc is None or isinstance(doc, dict), p
'
if command -v kubectl >/dev/null; then
  step "kubectl kustomize deploy/kubernetes" kubectl kustomize deploy/kubernetes
  if command -v kubernetes-validate >/dev/null; then
    kubectl kustomize deploy/kubernetes >"$tmp/built.yaml" 2>/dev/null
    # --strict: unknown fields are errors. 1.30 is the minimum (the preStop sleep action).
    # The ServiceMonitor CRD has no schema there: a warning, not a failure.
    step "kubernetes-validate --strict (Kubernetes 1.30)" \
      kubernetes-validate --strict --quiet -k 1.30.0 "$tmp/built.yaml"
  else
    skip "kubernetes-validate" "not installed: pip install kubernetes-validate"
  fi
else
  skip "kubectl kustomize" "kubectl not installed"
fi

# --- The shipped tollgate configs ---------------------------------------------------------------
# The newest build of this tree (a stale target/release can predate the pipeline).
tollgate=${TOLLGATE_BIN:-}
if [ -z "$tollgate" ]; then
  for b in target/release/tollgate target/debug/tollgate; do
    if [ -x "$b" ] && { [ -z "$tollgate" ] || [ "$b" -nt "$tollgate" ]; }; then tollgate=$b; fi
  done
fi
[ -z "$tollgate" ] && tollgate=$(command -v tollgate || true)
if [ -n "$tollgate" ]; then
  echo "      (tollgate binary: $tollgate)"
  # systemd: tollgate.toml next to the repository's reloadable files, as in /etc/tollgate.
  mkdir -p "$tmp/systemd"
  cp deploy/systemd/tollgate.toml config/catalog.toml config/entitlements.toml \
    config/credentials.toml "$tmp/systemd/"
  step "tollgate check-config: deploy/systemd/tollgate.toml" \
    "$tollgate" check-config --config "$tmp/systemd/tollgate.toml"
  # Kubernetes: the ConfigMap and Secret laid out as their volumes, credentials path rewritten.
  step "lay out the ConfigMap and Secret as their volumes" python3 - "$tmp/k8s" <<'EOF'
import pathlib, sys, yaml
root = pathlib.Path(sys.argv[1])
(root / "config").mkdir(parents=True)
(root / "credentials").mkdir()
cm = yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))
secret = yaml.safe_load(open("deploy/kubernetes/secret.yaml"))
for key, text in cm["data"].items():
    if key == "tollgate.toml":
        text = text.replace("/etc/tollgate-credentials/", f"{root}/credentials/")
    (root / "config" / key).write_text(text)
(root / "credentials" / "credentials.toml").write_text(secret["stringData"]["credentials.toml"])
EOF
  [ -d "$tmp/k8s/config" ] &&
    step "tollgate check-config: deploy/kubernetes (rendered)" \
      "$tollgate" check-config --config "$tmp/k8s/config/tollgate.toml"
  # The consumer takes flags, not a config file: every flag its unit and its Deployment pass
  # must be one `tollgate consumer` knows.
  step "tollgate consumer knows the flags of its unit and its Deployment" \
    python3 - "$tollgate" <<'EOF'
import re, subprocess, sys, yaml
help_text = subprocess.run([sys.argv[1], "consumer", "--help"], capture_output=True,
                           text=True, check=True).stdout
known = set(re.findall(r"(--[a-z][a-z-]*)", help_text))
unit = open("deploy/systemd/tollgate-consumer.service").read()
exec_start = next(l for l in unit.splitlines() if l.startswith("ExecStart="))
deployment = next(d for d in yaml.safe_load_all(open("deploy/kubernetes/consumer-deployment.yaml")) if d)
args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
used = set(re.findall(r"(--[a-z][a-z-]*)", exec_start)) | {a for a in args if a.startswith("--")}
unknown = sorted(used - known)
assert not unknown, f"flags `tollgate consumer` does not know: {unknown}"
assert "TOLLGATE_POSTGRES" in help_text, "--postgres no longer reads $TOLLGATE_POSTGRES"
EOF
  step "tollgate admin serve knows the flags of its Deployment" \
    python3 - "$tollgate" <<'EOF'
import re, subprocess, sys, yaml
help_text = subprocess.run([sys.argv[1], "admin", "serve", "--help"], capture_output=True,
                           text=True, check=True).stdout
known = set(re.findall(r"(--[a-z][a-z-]*)", help_text))
deployment = next(d for d in yaml.safe_load_all(open("deploy/kubernetes/entitlements-deployment.yaml")) if d)
container = deployment["spec"]["template"]["spec"]["containers"][0]
assert container["args"][:2] == ["admin", "serve"], container["args"]
unknown = sorted({a for a in container["args"] if a.startswith("--")} - known)
assert not unknown, f"flags `tollgate admin serve` does not know: {unknown}"
assert "TOLLGATE_STORE" in help_text, "--store no longer reads $TOLLGATE_STORE"
assert any(e["name"] == "TOLLGATE_STORE" for e in container["env"]), "the Deployment sets no TOLLGATE_STORE"
EOF
else
  skip "tollgate check-config" "no tollgate binary: cargo build --release"
fi

# --- systemd ------------------------------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  # verify wants ExecStart's binary to exist: point the units at any tollgate binary, or /bin/true.
  exe=${tollgate:+$(realpath "$tollgate")}
  for unit in tollgate tollgate-consumer; do
    sed "s#/usr/local/bin/tollgate#${exe:-/bin/true}#g" "deploy/systemd/$unit.service" \
      >"$tmp/$unit.service"
    step "systemd-analyze verify deploy/systemd/$unit.service" \
      systemd-analyze verify "$tmp/$unit.service"
  done
else
  skip "systemd-analyze verify" "systemd-analyze not installed"
fi

if [ "$failed" -ne 0 ]; then
  echo "deploy/: validation FAILED"
  exit 1
fi
echo "deploy/: all checks passed"
