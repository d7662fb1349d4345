#!/usr/bin/env bash
# Runs every test, on a fresh machine too: installs or starts what the tests need, then
# formatting, lints (the load-test kit and the fuzz targets included), every test, and a
# smoke run of each fuzz target. README.md "Run every test" names this script; .ci/run runs
# it and nothing else.
#
# What the tests need, and why:
# - nats-server (JetStream), PostgreSQL and redis-server: the pipeline, settlement and fleet
#   tests start private instances on ephemeral ports in temp dirs (never the machine's shared
#   ones);
# - prometheus and promtool: the deploy tests (alert rule tests, a real scrape);
# - python3 with venv and the official SDK (tests/sdk/requirements.txt): the SDK tests;
# - Node.js and npm, and the official Node.js SDK (tests/sdk/node/package.json): its suite;
# - curl with HTTP/2 (nghttp2): the HTTPS and HTTP/2 tests drive the gateway with it;
# - cargo-fuzz: the fuzz smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  if ! have apt-get; then
    echo "missing: $* (and no apt-get to install it)" >&2
    return 1
  fi
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

log "toolchain"
cargo --version
rustup component list --installed 2>/dev/null | grep -qE '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -qE '^clippy' || rustup component add clippy

log "servers the tests start privately (nats-server with JetStream, PostgreSQL, redis-server)"
have nats-server || [ -x /usr/sbin/nats-server ] || apt_install nats-server
have redis-server || apt_install redis-server
if ! have initdb && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql
fi
# The tests run initdb/pg_ctl as the postgres user when they run as root.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home /var/lib/postgresql postgres
fi
have runuser || apt_install util-linux
if ! have initdb; then
  PATH="$PATH:$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | tail -n1)")"
  export PATH
fi
if ! have nats-server && [ -x /usr/sbin/nats-server ]; then
  export PATH="$PATH:/usr/sbin"
fi
nats-server --version
initdb --version
redis-server --version

log "prometheus + promtool (the deploy tests: alert rule tests, a real Prometheus scrape)"
if ! have promtool || ! have prometheus; then
  # The Debian package may try to start its service; a policy-rc.d keeps it from binding :9090.
  cleanup_policy=0
  if [ "$(id -u)" -eq 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    cleanup_policy=1
  fi
  apt_install prometheus
  [ "$cleanup_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
promtool --version | head -n1

log "python3 + venv and the official SDK (the SDK end-to-end tests)"
have python3 || apt_install python3
python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
venv=target/sdk-venv
req=tests/sdk/requirements.txt
if [ "$(cat "$venv/.requirements-installed" 2>/dev/null)" != "$(cat "$req")" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/.requirements-installed"
fi
"$venv/bin/python" -c 'import tencentcloud.ocr.v20181119, tencentcloud.facefusion.v20220927; print("SDK ok")'

log "Node.js, npm and curl with HTTP/2 (the Node.js SDK, HTTPS and HTTP/2 tests)"
have node && have npm || apt_install nodejs npm
have curl || apt_install curl
node --version
curl -V | grep -q HTTP2 || { echo "curl lacks HTTP/2 support" >&2; exit 1; }

log "formatting"
cargo fmt --all --check
cargo fmt --check --manifest-path loadtest/Cargo.toml
cargo fmt --check --manifest-path fuzz/Cargo.toml

log "lints"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --all-targets --manifest-path loadtest/Cargo.toml -- -D warnings
cargo clippy --all-targets --manifest-path fuzz/Cargo.toml -- -D warnings

log "tests"
cargo test --workspace --all-targets
cargo test --manifest-path loadtest/Cargo.toml

log "fuzz targets: corpus replay and 5 s each"
scripts/fuzz.sh smoke
