#!/usr/bin/env bash
# The documented benchmark (docs/benchmarks.md): a fresh broker and the three services from a
# release build on this machine, then
#   1. saturation: fxctl bench --sagas N --concurrency C --baseline (the null saga beside it),
#   2. fixed offered load at 250, 500, 750, 1000, 1500, 2000, 2500 and 3000 sagas/s (--rates)
#      for D seconds each (up to saturation on the 2-core dev machine),
#   3. after each run (each followed by fxctl audit, which reads every store whole), each
#      service's resident memory and the sagas run so far (140,000 in all with the defaults),
# writing docs/bench/results.jsonl and plotting docs/bench/latency.png (scripts/plot_latency.py).
#
# The broker fsyncs every message before its ack (`sync_interval: always`, as config/nats.conf
# sets it); --sync 2m runs it with nats-server's default instead (an fsync every 2 minutes).
#
# --compare-sync runs a short comparison instead, both broker settings one after the other on
# fresh stores, writing docs/bench/durability.jsonl: for each, saturation with the null saga
# (--sagas, default 4000 here) and --rate 500 for --duration seconds.
#
# --venue-sweep runs the system through fx-venue (fx-trade with FX_VENUE_URL) at 0, 10, 25, 50
# and 100 ms of venue latency, each on fresh stores, writing docs/bench/venue-<sync>.jsonl: each,
# saturation (--sagas, default 4000, --concurrency, default 512 here) and --rate 500 for
# --duration seconds. With --in-process-venue the same sweep runs fx-trade's embedded simulated
# venue at those latencies instead (docs/bench/venue-in-process-<sync>.jsonl): what the process
# boundary costs.
#
# --audit-scale runs sagas into one system until it holds --sagas (default 1,000,000), timing
# `fxctl audit` at 100,000 and at the end, and at each point measuring 500 sagas/s for
# --duration seconds without and then with an audit running beside it, writing
# docs/bench/audit.jsonl.
#
# --tracker runs fx-tracker beside the services in every system started (it consumes the whole
# stream and keeps its own store, as in production); without it, no tracker runs.
#
# --store-scale runs sagas into one system until it holds --sagas (default 100,000), then for
# each service: its resident memory, its store's bytes on disk, and how long a restart after a
# SIGKILL takes until /readyz answers (recovery replays the log not yet trimmed), writing
# docs/bench/store-scale.jsonl.
#
# --traces measures what exporting spans costs (README, "Traces"): systems with the export off
# and on, in turn (off, on, off, on), each on fresh stores: saturation (--sagas, default 4000)
# and --rate 500 for --duration seconds, each followed by the CPU seconds the three services
# used for it; "on" exports over OTLP/HTTP (protobuf) to a local sink that answers 200 and
# counts what it received. Writes docs/bench/traces-<sync>.jsonl.
#
#   scripts/bench.sh [--tracker] [--sagas 25000] [--concurrency 256] [--duration 10] [--sync always|2m]
#                    [--rates "250 500 750 1000 1500 2000 2500 3000"]
#   scripts/bench.sh --compare-sync [--tracker] [--sagas 4000] [--concurrency 256] [--duration 10]
#   scripts/bench.sh --audit-scale [--sagas 1000000] [--sync always|2m]
#   scripts/bench.sh --store-scale [--sagas 100000] [--sync always|2m]
#   scripts/bench.sh --traces [--sagas 4000] [--concurrency 256] [--duration 10] [--sync always|2m]
#   scripts/bench.sh --venue-sweep [--in-process-venue] [--sagas 4000] [--concurrency 512]
#                    [--duration 10] [--sync always|2m]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
sagas=""; concurrency=""; duration=10; sync=always; compare=0; sweep=0; in_process=0; audit_scale=0
traces=0; store_scale=0; tracker=0
# The offered loads of the default run, in sagas/s.
rates="250 500 750 1000 1500 2000 2500 3000"
# Venue latency of the system start_system starts; empty: fx-trade's embedded venue.
venue_latency=""
while (($#)); do
  case "$1" in
    --sagas) sagas="$2"; shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --sync) sync="$2"; shift 2 ;;
    --compare-sync) compare=1; shift ;;
    --venue-sweep) sweep=1; shift ;;
    --in-process-venue) in_process=1; shift ;;
    --audit-scale) audit_scale=1; shift ;;
    --traces) traces=1; shift ;;
    --store-scale) store_scale=1; shift ;;
    --tracker) tracker=1; shift ;;
    --rates) rates="$2"; shift 2 ;;
    -h|--help) sed -n '2,51p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

cargo build --release --quiet -p krw -p trade -p usd -p fxctl -p venue -p tracker
# Where cargo put the build: $CARGO_TARGET_DIR when set, else ./target.
bin="${CARGO_TARGET_DIR:-$root/target}/release"
work="$(mktemp -d)"
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

nats_bin="$(scripts/ensure-nats.sh)"

# Starts a fresh broker (fsync setting $sync) and fx-krw, fx-trade, fx-usd on new stores under
# $work/$1 (with fx-venue at $venue_latency ms when that is set), and waits until they answer.
start_system() {
  system="$1"
  local dir="$work/$1" port
  mkdir -p "$dir"
  printf 'jetstream {\n  sync_interval: %s\n}\n' "$sync" >"$dir/nats.conf"
  port=$((20000 + RANDOM % 20000))
  export NATS_URL="nats://127.0.0.1:$port"
  "$nats_bin" -c "$dir/nats.conf" -js -a 127.0.0.1 -p "$port" -sd "$dir/js" >"$dir/nats.log" 2>&1 &
  pids+=($!)
  unset FX_VENUE_URL FX_VENUE_LATENCY_MS
  if [[ -n "$venue_latency" ]] && ((in_process)); then
    export FX_VENUE_LATENCY_MS="$venue_latency"
  elif [[ -n "$venue_latency" ]]; then
    local venue_port=$((40000 + RANDOM % 20000))
    FX_DATA_DIR="$dir/venue" FX_HTTP_ADDR="127.0.0.1:$venue_port" FX_VENUE_LATENCY_MS="$venue_latency" \
      RUST_LOG=warn "$bin/fx-venue" >"$dir/venue.log" 2>&1 &
    pids+=($!)
    export FX_VENUE_URL="http://127.0.0.1:$venue_port"
    for _ in $(seq 100); do curl -fs "$FX_VENUE_URL/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  for s in krw trade usd; do start_service "$s"; done
  if ((tracker)); then
    FX_DATA_DIR="$dir/tracker" FX_HTTP_ADDR="127.0.0.1:$((port + 1))" RUST_LOG=warn \
      "$bin/fx-tracker" >"$dir/tracker.log" 2>&1 &
    pids+=($!)
  fi
  for _ in $(seq 100); do "$bin/fxctl" audit >/dev/null 2>&1 && break; sleep 0.2; done
}

# The HTTP port of each service when set (the restart measurement polls /readyz); else off.
declare -A http_port=()
# Starts fx-$1 on its store under the current system's directory.
start_service() {
  local s="$1" http=off
  [[ -n "${http_port[$s]:-}" ]] && http="127.0.0.1:${http_port[$s]}"
  FX_DATA_DIR="$work/$system/$s" FX_HTTP_ADDR="$http" RUST_LOG=warn "$bin/fx-$s" >>"$work/$system/$s.log" 2>&1 &
  pids+=($!)
}

stop_system() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}

total=0
# Each service's resident memory, with the number of sagas run so far.
rss() {
  for s in krw trade usd; do
    pid=$(pgrep -f "$bin/fx-$s" | head -1)
    echo "{\"rss_kib\":{\"service\":\"$s\",\"kib\":$(awk '/VmRSS/ {print $2}' /proc/"$pid"/status),\"after_sagas\":$total}}" | tee -a "$out"
  done
}
# Runs `fxctl bench "$@"`, records its JSON line (tagged with the broker's fsync setting) and
# counts its sagas (no pipe into a function: that would run it in a subshell and lose the count).
run() {
  local line n
  line="$("$bin/fxctl" --json bench "$@" | tail -1)" || true
  local with_tracker=""
  ((tracker)) && with_tracker='"tracker":true,'
  [[ "$line" == "{"* ]] && line="{\"broker_sync\":\"$sync\",$with_tracker${venue_latency:+\"venue\":\"$venue_kind\",\"venue_latency_ms\":$venue_latency,}${line#\{}"
  echo "$line" | tee -a "$out"
  n="$(echo "$line" | sed -n 's/.*"sagas":\([0-9]*\).*/\1/p')"
  total=$((total + ${n:-0}))
  rss
}

# Times one `fxctl audit` of the whole system; records it with the sagas run so far.
time_audit() {
  local t0 t1 ok
  t0=$(date +%s%N)
  if "$bin/fxctl" --json audit >"$work/audit.json" 2>&1; then ok=true; else ok=false; fi
  t1=$(date +%s%N)
  echo "{\"audit\":{\"after_sagas\":$total,\"ms\":$(( (t1 - t0) / 1000000 )),\"ok\":$ok}}" | tee -a "$out"
}

# 500 sagas/s for $duration s, alone and then beside a running audit: what an audit costs the
# service that runs it.
serving_while_auditing() {
  echo "== 500 sagas/s for ${duration}s, no audit running (after $total sagas)"
  run --rate 500 --duration "$duration"
  echo "== 500 sagas/s for ${duration}s, with fxctl audit running beside it"
  "$bin/fxctl" --json audit >/dev/null 2>&1 &
  local auditor=$!
  run --rate 500 --duration "$duration"
  wait "$auditor" || true
}

if ((audit_scale)); then
  out="docs/bench/audit.jsonl"
  : >"$out"
  target="${sagas:-1000000}"
  start_system "audit"
  for step in 100000 "$target"; do
    ((step > total)) || continue
    echo "== filling: $((step - total)) sagas (to $step), concurrency ${concurrency:-512}"
    run --sagas "$((step - total))" --concurrency "${concurrency:-512}"
    echo "== fxctl audit after $total sagas"
    time_audit
    serving_while_auditing
  done
  exit 0
fi

if ((store_scale)); then
  out="docs/bench/store-scale.jsonl"
  : >"$out"
  target="${sagas:-100000}"
  base=$((30000 + RANDOM % 10000))
  http_port=([krw]=$base [trade]=$((base + 1)) [usd]=$((base + 2)))
  start_system "scale"
  echo "== filling: $target sagas, concurrency ${concurrency:-512}"
  run --sagas "$target" --concurrency "${concurrency:-512}"
  for s in krw trade usd; do
    pid=$(pgrep -f "$bin/fx-$s" | head -1)
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
    bytes=$(du -sb "$work/scale/$s" | cut -f1)
    t0=$(date +%s%N)
    start_service "$s"
    ready=false
    for _ in $(seq 6000); do
      if curl -fs "http://127.0.0.1:${http_port[$s]}/readyz" >/dev/null 2>&1; then ready=true; break; fi
      sleep 0.01
    done
    t1=$(date +%s%N)
    echo "{\"store_scale\":{\"service\":\"$s\",\"after_sagas\":$total,\"disk_bytes\":$bytes,\"disk_bytes_per_saga\":$((bytes / total)),\"restart_to_ready_ms\":$(( (t1 - t0) / 1000000 )),\"ready\":$ready}}" | tee -a "$out"
  done
  echo "== after the restarts"
  rss
  exit 0
fi

# CPU seconds (user + system) the three services have used so far.
service_cpu() {
  local s pid total_ticks=0
  for s in krw trade usd; do
    pid=$(pgrep -f "$bin/fx-$s" | head -1)
    total_ticks=$((total_ticks + $(awk '{print $14 + $15}' /proc/"$pid"/stat)))
  done
  echo "scale=2; $total_ticks / $(getconf CLK_TCK)" | bc
}

if ((traces)); then
  out="docs/bench/traces-$sync.jsonl"
  : >"$out"
  sink_port=$((40000 + RANDOM % 20000))
  # The OTLP/HTTP sink: answers every export 200 with an empty body (an empty
  # ExportTraceServiceResponse) and logs its size.
  python3 - "$sink_port" "$work/sink.log" <<'PY' &
import http.server, sys
port, log = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self.rfile.read(n)
        log.write(f"{n}\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
PY
  sink_pid=$!
  trap 'kill $sink_pid 2>/dev/null || true; cleanup' EXIT
  for round in 1 2; do
    for mode in off on; do
      unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_PROTOCOL
      if [[ $mode == on ]]; then
        export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port"
        export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
      fi
      : >"$work/sink.log"
      start_system "traces-$mode-$round"
      for load in saturation rate500; do
        cpu0=$(service_cpu)
        if [[ $load == saturation ]]; then
          echo "== export $mode (round $round): saturation, ${sagas:-4000} sagas, concurrency ${concurrency:-256}"
          run --sagas "${sagas:-4000}" --concurrency "${concurrency:-256}"
        else
          echo "== export $mode (round $round): offered load 500 sagas/s for ${duration}s"
          run --rate 500 --duration "$duration"
        fi
        cpu1=$(service_cpu)
        echo "{\"traces\":{\"export\":\"$mode\",\"round\":$round,\"load\":\"$load\",\"broker_sync\":\"$sync\",\"service_cpu_s\":$(echo "$cpu1 - $cpu0" | bc)}}" | tee -a "$out"
      done
      stop_system
      echo "{\"traces\":{\"export\":\"$mode\",\"round\":$round,\"sink_requests\":$(wc -l <"$work/sink.log"),\"sink_bytes\":$(awk '{s+=$1} END {print s+0}' "$work/sink.log")}}" | tee -a "$out"
    done
  done
  exit 0
fi

venue_kind=fx-venue
((in_process)) && venue_kind=in-process
if ((sweep)); then
  out="docs/bench/venue-$sync.jsonl"
  ((in_process)) && out="docs/bench/venue-in-process-$sync.jsonl"
  : >"$out"
  for venue_latency in 0 10 25 50 100; do
    start_system "venue-$venue_latency"
    echo "== $venue_kind venue at ${venue_latency} ms, broker sync_interval $sync: saturation, ${sagas:-4000} sagas, concurrency ${concurrency:-512}"
    run --sagas "${sagas:-4000}" --concurrency "${concurrency:-512}"
    echo "== $venue_kind venue at ${venue_latency} ms: offered load 500 sagas/s for ${duration}s"
    run --rate 500 --duration "$duration"
    stop_system
  done
  exit 0
fi
concurrency="${concurrency:-256}"

if ((compare)); then
  out="docs/bench/durability.jsonl"
  : >"$out"
  for sync in always 2m; do
    start_system "$sync"
    echo "== broker sync_interval $sync: saturation, ${sagas:-4000} sagas, with the null saga"
    run --sagas "${sagas:-4000}" --concurrency "$concurrency" --baseline
    echo "== broker sync_interval $sync: offered load 500 sagas/s for ${duration}s"
    run --rate 500 --duration "$duration"
    stop_system
  done
  exit 0
fi

out="docs/bench/results.jsonl"
: >"$out"
start_system "$sync"
echo "== broker sync_interval $sync: saturation: ${sagas:-25000} sagas, concurrency $concurrency, with the null-saga baseline"
run --sagas "${sagas:-25000}" --concurrency "$concurrency" --baseline
for rate in $rates; do
  echo "== offered load $rate sagas/s for ${duration}s"
  run --rate "$rate" --duration "$duration"
done
python3 scripts/plot_latency.py "$out" docs/bench/latency.png || echo "plot skipped (see scripts/plot_latency.py)"
