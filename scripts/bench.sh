#!/usr/bin/env bash
# The documented benchmark (docs/benchmarks.md): a fresh broker and the three services from a
# release build on this machine, then
#   1. saturation: fxctl bench --sagas N --concurrency C --baseline (the null saga beside it),
#   2. fixed offered load at 250, 500, 750, 1000, 1500, 2000, 2500 and 3000 sagas/s for
#      D seconds each (up to saturation on the 2-core dev machine),
#   3. after each run (each followed by fxctl audit, which reads every store whole), each
#      service's resident memory and the sagas run so far (140,000 in all with the defaults),
# writing docs/bench/results.jsonl and plotting docs/bench/latency.png (scripts/plot_latency.py).
#
#   scripts/bench.sh [--sagas 25000] [--concurrency 256] [--duration 10]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
sagas=25000; concurrency=256; duration=10
while (($#)); do
  case "$1" in
    --sagas) sagas="$2"; shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

cargo build --release --quiet -p krw -p trade -p usd -p fxctl
bin="$root/target/release"
work="$(mktemp -d)"
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port=$((20000 + RANDOM % 20000))
export NATS_URL="nats://127.0.0.1:$port"
"$(scripts/ensure-nats.sh)" -js -a 127.0.0.1 -p "$port" -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!)
for s in krw trade usd; do
  FX_DATA_DIR="$work/$s" FX_HTTP_ADDR=off RUST_LOG=warn "$bin/fx-$s" >"$work/$s.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 100); do "$bin/fxctl" audit >/dev/null 2>&1 && break; sleep 0.2; done

out="docs/bench/results.jsonl"
: >"$out"
total=0
# Each service's resident memory, with the number of sagas run so far.
rss() {
  for s in krw trade usd; do
    pid=$(pgrep -f "$bin/fx-$s" | head -1)
    echo "{\"rss_kib\":{\"service\":\"$s\",\"kib\":$(awk '/VmRSS/ {print $2}' /proc/"$pid"/status),\"after_sagas\":$total}}" | tee -a "$out"
  done
}
# Runs `fxctl bench "$@"`, records its JSON line and counts its sagas (no pipe into a
# function: that would run it in a subshell and lose the count).
run() {
  local line n
  line="$("$bin/fxctl" --json bench "$@" | tail -1)" || true
  echo "$line" | tee -a "$out"
  n="$(echo "$line" | sed -n 's/.*"sagas":\([0-9]*\).*/\1/p')"
  total=$((total + ${n:-0}))
  rss
}
echo "== saturation: $sagas sagas, concurrency $concurrency, with the null-saga baseline"
run --sagas "$sagas" --concurrency "$concurrency" --baseline
for rate in 250 500 750 1000 1500 2000 2500 3000; do
  echo "== offered load $rate sagas/s for ${duration}s"
  run --rate "$rate" --duration "$duration"
done
python3 scripts/plot_latency.py "$out" docs/bench/latency.png || echo "plot skipped (see scripts/plot_latency.py)"
