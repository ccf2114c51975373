#!/usr/bin/env bash
# The project's one test command (the README's, and CI's through .ci/run).
#
# Installs what the tests need (a nats-server >= 2.10, the nats CLI v0.5.0 built with Go and
# nats-py into .tools/; chromium, fuse3 and prometheus from Debian where it can), checks the
# Prometheus config and alert rules with promtool, then checks formatting,
# lints, and runs every test against real parts: a real nats-server per test, sled in temp dirs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "nats-server"
NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
export NATS_SERVER_BIN
"$NATS_SERVER_BIN" --version

step "nats CLI (for the test of every nats command in the docs)"
# Built from source with go install into .tools/bin; without Go the script says so and
# tests/tests/natscli.rs skips the CLI test with that reason.
if NATS_CLI_BIN="$(scripts/ensure-natscli.sh)"; then
  export NATS_CLI_BIN
  "$NATS_CLI_BIN" --version
else
  echo "no nats CLI; the nats CLI test will be skipped"
fi

step "nats-py (for the Python client snippet of docs/clients.md)"
if NATS_PY_PYTHON="$(scripts/ensure-natspy.sh)"; then
  export NATS_PY_PYTHON
  "$NATS_PY_PYTHON" -c 'import importlib.metadata as m; print("nats-py", m.version("nats-py"))'
else
  echo "no nats-py; the Python client test will be skipped"
fi

step "chromium (for the dashboard's browser test)"
if command -v chromium >/dev/null 2>&1; then
  chromium --version 2>/dev/null || true
elif [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  # Debian's package; the browser test is skipped (and says so) if this fails.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium; the browser test will be skipped"
else
  echo "chromium not installed and apt-get not usable here; the browser test will be skipped"
fi

step "fuse3 (for the power-cut tests' LazyFs)"
if command -v fusermount3 >/dev/null 2>&1; then
  fusermount3 --version 2>&1 || true
elif [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  # Debian's package brings fusermount3; without it (or /dev/fuse) the power-cut tests are
  # skipped, and say so.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null) \
    || echo "could not install fuse3; the power-cut tests will be skipped"
else
  echo "fusermount3 not installed and apt-get not usable here; the power-cut tests will be skipped"
fi
[[ -e /dev/fuse ]] || echo "/dev/fuse is missing; the power-cut tests will be skipped"

step "promtool: config/prometheus (the scrape config, the alert rules and their unit tests)"
if PROMETHEUS_BIN="$(scripts/ensure-prometheus.sh)"; then
  export PROMETHEUS_BIN
  promtool="$(dirname "$PROMETHEUS_BIN")/promtool"
  [[ -x "$promtool" ]] || promtool="$(command -v promtool)"
  "$promtool" check config config/prometheus/prometheus.yml
  "$promtool" check rules config/prometheus/alerts.yml
  "$promtool" test rules config/prometheus/alerts_test.yml
else
  unset PROMETHEUS_BIN
  echo "Prometheus could not be installed: promtool's checks and the real-Prometheus test are skipped"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace "$@"
