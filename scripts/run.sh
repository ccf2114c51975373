#!/usr/bin/env bash
# The one-command local run: builds, starts a broker (or uses $NATS_URL), the four services,
# seeds demo accounts, runs sample exchanges ending COMPLETED, COMPENSATED and REJECTED, prints
# what to open and try, and keeps running. Ctrl-C stops everything it started.
#
# Data lives under ./.fx/ (git-ignored) and is reused: running it twice continues where the
# first run stopped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

fx_dir="$root/.fx"
logs="$fx_dir/logs"
tracker_port="${FX_TRACKER_PORT:-8080}"
nats_port="${FX_NATS_PORT:-4222}"
mkdir -p "$logs"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

pids=()
cleanup() {
  trap - EXIT INT TERM
  if ((${#pids[@]})); then
    say "stopping ${#pids[@]} processes"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Waits up to $2 seconds for command $1 to succeed (a script's poll, not a test's sleep).
wait_until() {
  local what="$1" seconds="$2"; shift 2
  for _ in $(seq $((seconds * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up within ${seconds}s; see $logs/"
}

say "building (release)"
cargo build --release --quiet -p krw -p trade -p usd -p tracker -p fxctl
bin="$root/target/release"
fxctl="$bin/fxctl"

if [[ -n "${NATS_URL:-}" ]]; then
  say "using the broker at NATS_URL=$NATS_URL"
else
  export NATS_URL="nats://127.0.0.1:$nats_port"
  if port_open 127.0.0.1 "$nats_port"; then
    say "a broker already listens on $nats_port; using it"
  else
    nats_bin="$(scripts/ensure-nats.sh)"
    say "starting nats-server on $nats_port (JetStream store in .fx/nats, monitoring on 8222)"
    "$nats_bin" -js -a 127.0.0.1 -p "$nats_port" -m 8222 -sd "$fx_dir/nats" >"$logs/nats.log" 2>&1 &
    pids+=($!)
    wait_until "nats-server" 20 port_open 127.0.0.1 "$nats_port"
  fi
fi

start() {
  local name="$1" http="$2"
  FX_DATA_DIR="$fx_dir/$name" FX_HTTP_ADDR="$http" RUST_LOG="${RUST_LOG:-info}" \
    "$bin/fx-$name" >"$logs/$name.log" 2>&1 &
  pids+=($!)
}
say "starting fx-krw, fx-trade, fx-usd, fx-tracker (logs in .fx/logs/)"
start usd 127.0.0.1:9103
start trade 127.0.0.1:9102
start krw 127.0.0.1:9101
start tracker "127.0.0.1:$tracker_port"
wait_until "fx-krw and fx-usd" 60 "$fxctl" audit
wait_until "fx-tracker" 30 port_open 127.0.0.1 "$tracker_port"

if [[ "$("$fxctl" balance --user alice --json | grep -c '"krw_available": "0"')" == 1 ]]; then
  say "seeding demo accounts alice, bob, carol"
  "$fxctl" --actor run.sh deposit --user alice --krw 5000000
  "$fxctl" --actor run.sh deposit --user bob --krw 3000000
  "$fxctl" --actor run.sh deposit --user carol --krw 2000000
else
  say "demo accounts exist (data reused from .fx/)"
fi

say "sample exchanges"
echo "-- alice sells 1,500,000 KRW (ends COMPLETED):"
"$fxctl" exchange --user alice --krw 1500000 --min-usd 1000.00 --wait || true
echo "-- carol's USD account is frozen, so the credit fails and everything is reversed (COMPENSATED):"
"$fxctl" --actor run.sh freeze --user carol >/dev/null
"$fxctl" exchange --user carol --krw 700000 --wait || true
"$fxctl" --actor run.sh unfreeze --user carol >/dev/null
echo "-- bob asks for more than he has (REJECTED):"
"$fxctl" exchange --user bob --krw 9000000 --wait || true

cat <<TXT

  Dashboard:   http://127.0.0.1:$tracker_port/
  JSON API:    http://127.0.0.1:$tracker_port/api/sagas   /api/stats   /metrics
  Broker:      $NATS_URL   (data in .fx/, logs in .fx/logs/)

  Try next:
    $fxctl exchange --user alice --krw 250000 --wait
    $fxctl balance --user alice
    $fxctl audit
    nats pub fx.exchange.requested.alice '{"saga_id":"'"\$(cat /proc/sys/kernel/random/uuid)"'","user_id":"alice","krw_amount":"100000"}'

  Ctrl-C stops everything this script started.
TXT
wait
