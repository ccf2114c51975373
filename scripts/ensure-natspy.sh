#!/usr/bin/env bash
# Makes nats-py (the NATS client for Python, from PyPI) available and prints, on its last line,
# the path of a python that imports it.
#
# Order: $NATS_PY_PYTHON if set, then the project-local venv .tools/nats-py (git-ignored, never
# system-wide) with the pinned nats-py, installing it there if needed. nats-py 2.16.0 is the
# version docs/clients.md was tested with (tests/tests/natscli.rs). Where python3, its venv
# module or pip is missing it says so and exits 1: the Python tests are then skipped, with that
# reason.
set -euo pipefail

NATS_PY_PIN="2.16.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/nats-py"

pinned() {
  "$1" -c 'import importlib.metadata as m, sys; sys.exit(m.version("nats-py") != sys.argv[1])' \
    "$NATS_PY_PIN" 2>/dev/null
}

if [[ -n "${NATS_PY_PYTHON:-}" ]]; then
  if pinned "$NATS_PY_PYTHON"; then echo "$NATS_PY_PYTHON"; exit 0; fi
  echo "ensure-natspy: NATS_PY_PYTHON=$NATS_PY_PYTHON is missing or has no nats-py $NATS_PY_PIN" >&2
  exit 1
fi

if [[ -x "$venv/bin/python" ]] && pinned "$venv/bin/python"; then
  echo "$venv/bin/python"; exit 0
fi

if ! command -v python3 >/dev/null 2>&1; then
  echo "ensure-natspy: python3 is not installed, so nats-py cannot be installed; the Python client tests will be skipped (apt-get install python3 python3-venv)" >&2
  exit 1
fi
echo "ensure-natspy: installing nats-py==$NATS_PY_PIN into $venv" >&2
mkdir -p "$root/.tools"
if [[ ! -x "$venv/bin/pip" ]]; then
  python3 -m venv "$venv" >&2 || {
    echo "ensure-natspy: python3 -m venv failed, so nats-py cannot be installed; the Python client tests will be skipped (apt-get install python3-venv)" >&2
    exit 1
  }
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "nats-py==$NATS_PY_PIN" >&2 || {
  echo "ensure-natspy: pip could not install nats-py==$NATS_PY_PIN; the Python client tests will be skipped" >&2
  exit 1
}
if pinned "$venv/bin/python"; then
  echo "$venv/bin/python"; exit 0
fi
echo "ensure-natspy: nats-py installed but $venv/bin/python does not import it" >&2
exit 1
