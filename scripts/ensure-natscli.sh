#!/usr/bin/env bash
# Makes the nats CLI (github.com/nats-io/natscli) v0.5.0 available and prints its path on its
# last line.
#
# Order: $NATS_CLI_BIN if set, then .tools/bin/nats if it is v0.5.0, else it builds it from
# source with `go install` into .tools/bin (GOBIN; git-ignored, never system-wide). v0.5.0 is the
# version the docs were tested with (tests/tests/natscli.rs); v0.5.1 is not served by the Go
# module proxy. Where Go is missing it says so and exits 1: the tests that need the CLI are then
# skipped, with that reason.
set -euo pipefail

NATSCLI_PIN="v0.5.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gobin="$root/.tools/bin"
bin="$gobin/nats"

pinned() { [[ "$("$1" --version 2>&1)" == "$NATSCLI_PIN" ]]; }

if [[ -n "${NATS_CLI_BIN:-}" ]]; then
  if pinned "$NATS_CLI_BIN"; then echo "$NATS_CLI_BIN"; exit 0; fi
  echo "ensure-natscli: NATS_CLI_BIN=$NATS_CLI_BIN is missing or not nats CLI $NATSCLI_PIN" >&2
  exit 1
fi

if [[ -x "$bin" ]] && pinned "$bin"; then
  echo "$bin"; exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "ensure-natscli: Go is not installed (no go on PATH), so the nats CLI $NATSCLI_PIN cannot be built; the nats CLI tests will be skipped" >&2
  exit 1
fi

echo "ensure-natscli: building nats CLI $NATSCLI_PIN into $gobin with go install (a minute or two)" >&2
mkdir -p "$gobin"
GOBIN="$gobin" go install "github.com/nats-io/natscli/nats@$NATSCLI_PIN" >&2
if [[ -x "$bin" ]] && pinned "$bin"; then
  echo "$bin"; exit 0
fi
echo "ensure-natscli: go install finished but $bin is not nats CLI $NATSCLI_PIN" >&2
exit 1
