#!/usr/bin/env bash
# Writes the screenshots of the README's dashboard tour into docs/img/: a real nats-server and
# fx-tracker with 60 hand-built sagas of every outcome (and one dead letter), photographed in
# headless Chromium over the DevTools protocol (services/tracker/tests/browser.rs,
# screenshots_for_the_docs):
#   docs/img/tracker-dashboard.png   the dashboard: counts, charts, flagged and recent sagas
#   docs/img/tracker-search.png      a search (state=COMPENSATED&reason=account_frozen)
#   docs/img/tracker-saga.png        a compensated saga's page: its sequence diagram
#
#   scripts/screenshots.sh            (needs chromium: apt-get install chromium)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [[ -z "${NATS_SERVER_BIN:-}" ]]; then
  NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
  export NATS_SERVER_BIN
fi
FX_SCREENSHOT_DIR="$root/docs/img" cargo test -p tracker --test browser screenshots_for_the_docs \
  -- --ignored --nocapture
