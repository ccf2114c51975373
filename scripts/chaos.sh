#!/usr/bin/env bash
# Long chaos runs: the four real binaries and a real nats-server as processes, with services
# and the broker SIGKILLed and restarted, services SIGSTOPped, and power cuts (every store on a
# filesystem that loses what was not fsynced; skipped where FUSE is missing), under load.
# Release build.
#
#   scripts/chaos.sh --sagas 10000 --minutes 10 [--seed N]
#
# The rate is chosen so the sagas spread over the minutes; kills scale with the duration.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sagas=10000
minutes=10
seed=""
while (($#)); do
  case "$1" in
    --sagas) sagas="$2"; shift 2 ;;
    --minutes) minutes="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
export NATS_SERVER_BIN
export CHAOS_SAGAS="$sagas"
export CHAOS_RATE=$(( sagas / (minutes * 60) > 0 ? sagas / (minutes * 60) : 1 ))
export CHAOS_KILLS=$(( minutes * 12 ))
export CHAOS_BROKER_KILLS=$(( minutes > 1 ? minutes : 1 ))
export CHAOS_STOPS=$(( minutes * 3 ))
export CHAOS_VENUE_KILLS=$(( minutes * 2 ))
export CHAOS_VENUE_STOPS=$(( minutes * 2 ))
export CHAOS_POWER_CUTS=$(( minutes > 1 ? minutes : 1 ))
[[ -n "$seed" ]] && export CHAOS_SEED="$seed"
echo "chaos: $CHAOS_SAGAS sagas at $CHAOS_RATE/s, $CHAOS_KILLS service kills, $CHAOS_BROKER_KILLS broker kills, $CHAOS_STOPS SIGSTOPs, $CHAOS_VENUE_KILLS venue kills, $CHAOS_VENUE_STOPS venue SIGSTOPs, $CHAOS_POWER_CUTS power cuts"
exec cargo test --release -p fx-tests --test chaos -- --nocapture
