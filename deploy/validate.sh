#!/usr/bin/env bash
# Validates everything under deploy/ that can be checked without a cluster or a running host.
#
#   bash deploy/validate.sh
#
# Needs: python3 with PyYAML (python3-yaml), promtool (Debian: apt-get install prometheus).
# Uses when present (a step is reported SKIP otherwise): kubectl (kustomize build),
# systemd-analyze, and a tollgate binary (PATH, target/release or target/debug) for
# `tollgate check-config` on the shipped configs. Exits non-zero if any step fails.
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
else
  skip "promtool" "not installed: apt-get install prometheus"
  failed=1
fi
step "PromQL metric names and syntax (deploy/check_promql.py)" python3 deploy/check_promql.py

# --- Grafana ------------------------------------------------------------------------------------
step "dashboard is valid JSON" python3 -m json.tool deploy/grafana/tollgate-dashboard.json

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
else
  skip "kubectl kustomize" "kubectl not installed"
fi

# --- The shipped tollgate configs ---------------------------------------------------------------
tollgate=$(command -v tollgate || true)
for b in target/release/tollgate target/debug/tollgate; do
  [ -z "$tollgate" ] && [ -x "$b" ] && tollgate=$b
done
if [ -n "$tollgate" ]; then
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
else
  skip "tollgate check-config" "no tollgate binary: cargo build --release"
fi

# --- systemd ------------------------------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  # verify wants ExecStart's binary to exist: point the unit at any tollgate binary, or /bin/true.
  exe=${tollgate:+$(realpath "$tollgate")}
  sed "s#/usr/local/bin/tollgate#${exe:-/bin/true}#g" deploy/systemd/tollgate.service \
    >"$tmp/tollgate.service"
  step "systemd-analyze verify deploy/systemd/tollgate.service" \
    systemd-analyze verify "$tmp/tollgate.service"
else
  skip "systemd-analyze verify" "systemd-analyze not installed"
fi

if [ "$failed" -ne 0 ]; then
  echo "deploy/: validation FAILED"
  exit 1
fi
echo "deploy/: all checks passed"
