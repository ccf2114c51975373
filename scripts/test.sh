#!/usr/bin/env bash
# The project's one test command (the README's, and CI's through .ci/run).
#
# Installs what the tests need (a nats-server >= 2.10 into .tools/), then checks formatting,
# lints, and runs every test against real parts: a real nats-server per test, sled in temp dirs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "nats-server"
NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
export NATS_SERVER_BIN
"$NATS_SERVER_BIN" --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace "$@"
