#!/usr/bin/env bash
# A local 3-node JetStream cluster on loopback and the partitioned services on it, for trying
# the saga with replicated (R3) streams and users sharded across service instances. Ctrl-C
# stops everything it started.
#
#   scripts/cluster.sh [--partitions N]      (default 2; 1 to 8)
#   scripts/cluster.sh --partitions N --bench [--sagas 20000] [--concurrency 256] [--rate 1000]
#       the documented cluster benchmark (docs/benchmarks.md): release build, fresh data under
#       .fx/cluster-bench (kept until the next run), no tracker, RUST_LOG=warn; runs fxctl bench saturated
#       with the null-saga baseline, then at a fixed rate for 10 s, appends both results to
#       docs/bench/cluster.jsonl, and stops.
#
#   nodes n0 n1 n2   clients 127.0.0.1:4222/4223/4224, monitoring :8222/8223/8224,
#                    routes :6222/6223/6224, cluster name fx, JetStream data .fx/cluster/n<i>
#   services         fx-krw, fx-trade, fx-usd: one instance per partition k (FX_PARTITIONS=N,
#                    FX_PARTITION=k), HTTP on 127.0.0.1:91<k>1 / 91<k>2 / 91<k>3, data under
#                    .fx/cluster/<service>-p<k>; one fx-tracker reading every partition.
#                    NATS_URL lists all three nodes, FX_STREAM_REPLICAS=3, logs in
#                    .fx/cluster/logs/.
#
# The partition count is fixed when FX is created: to try another count, stop the script and
# remove .fx/cluster first (the services refuse to start on a stream of another count).
#
# No broker auth here (unlike scripts/run.sh): the cluster is for trying replication on one
# machine. Kill a node to watch a new leader take over; the services and fxctl reconnect to the
# others:
#   curl -s 'http://127.0.0.1:8222/jsz?accounts=true&streams=true'   # who leads FX
#   kill <the pid this script prints for that node>
#   kill -9 "$(cat .fx/cluster/krw-p0.pid)"   # only partition 0 waits; the script restarts it
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

partitions=2; bench=0; sagas=20000; concurrency=256; rate=1000
while (($#)); do
  case "$1" in
    --partitions) partitions="$2"; shift 2 ;;
    --bench) bench=1; shift ;;
    --sagas) sagas="$2"; shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "cluster.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$partitions" =~ ^[1-8]$ ]]; then
  echo "cluster.sh: --partitions must be 1 to 8" >&2
  exit 2
fi

dir="$root/.fx/cluster"
if ((bench)); then
  # A fresh cluster every run, so runs compare; kept afterwards for its logs.
  dir="$root/.fx/cluster-bench"
  rm -rf "$dir"
  export RUST_LOG="${RUST_LOG:-warn}"
fi
logs="$dir/logs"
# The partition count is fixed when FX is created: refuse a data dir made with another count
# (the services would refuse too, one by one, after the cluster is up).
if [[ -d "$dir/n0" ]]; then
  had="$(cat "$dir/partitions" 2>/dev/null || echo 1)"
  if [[ "$had" != "$partitions" ]]; then
    echo "cluster.sh: .fx/cluster holds a cluster made with $had partition(s); run with --partitions $had, or remove .fx/cluster to start over with $partitions" >&2
    exit 2
  fi
fi
tracker_port="${FX_TRACKER_PORT:-8080}"
client_ports=(4222 4223 4224)
monitor_ports=(8222 8223 8224)
route_ports=(6222 6223 6224)
mkdir -p "$logs"
echo "$partitions" >"$dir/partitions"

script=cluster.sh
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

# Whether node $1's /jsz names a JetStream meta leader.
meta_leader() {
  local body
  body="$(exec 3<>"/dev/tcp/127.0.0.1/${monitor_ports[$1]}" &&
    printf 'GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && cat <&3)" || return 1
  grep -Eq '"leader": *"[^"]+"' <<<"$body"
}

# Whether node $1's /healthz says ok: JetStream is up and the streams it holds are current
# (after a restart on existing data, streams need a moment to elect leaders again).
healthy() {
  local body
  body="$(exec 3<>"/dev/tcp/127.0.0.1/${monitor_ports[$1]}" &&
    printf 'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && cat <&3)" || return 1
  head -n 1 <<<"$body" | grep -q ' 200 '
}

for p in "${client_ports[@]}" "${monitor_ports[@]}" "${route_ports[@]}"; do
  if port_open 127.0.0.1 "$p"; then
    die "port $p is in use (another broker or scripts/run.sh?); stop it first"
  fi
done

say "building (release)"
cargo build --release --quiet -p krw -p trade -p usd -p tracker -p fxctl
# Where cargo put the build: $CARGO_TARGET_DIR when set, else ./target.
bin="${CARGO_TARGET_DIR:-$root/target}/release"
fxctl="$bin/fxctl"
nats_bin="$(scripts/ensure-nats.sh)"

urls=""
for i in 0 1 2; do urls+="${urls:+,}nats://127.0.0.1:${client_ports[$i]}"; done
export NATS_URL="$urls" FX_STREAM_REPLICAS=3 FX_PARTITIONS="$partitions"
unset NATS_USER NATS_PASSWORD NATS_CREDS

say "starting nats-server n0 n1 n2 (cluster fx; data in .fx/cluster/n<i>, logs in .fx/cluster/logs/)"
for i in 0 1 2; do
  routes=""
  for j in 0 1 2; do
    ((j == i)) || routes+="${routes:+,}nats://127.0.0.1:${route_ports[$j]}"
  done
  "$nats_bin" --server_name "n$i" --cluster_name fx \
    --cluster "nats://127.0.0.1:${route_ports[$i]}" --routes "$routes" \
    -js -sd "$dir/n$i" -a 127.0.0.1 -p "${client_ports[$i]}" -m "${monitor_ports[$i]}" \
    >"$logs/n$i.log" 2>&1 &
  pids+=($!)
  echo "   n$i: pid $!, nats://127.0.0.1:${client_ports[$i]}, http://127.0.0.1:${monitor_ports[$i]}/jsz"
done
for i in 0 1 2; do
  wait_until "nats-server n$i" 20 port_open 127.0.0.1 "${client_ports[$i]}"
  wait_until "a JetStream meta leader (seen from n$i)" 30 meta_leader "$i"
done
for i in 0 1 2; do
  wait_until "JetStream on n$i to be healthy" 60 healthy "$i"
done

# Starts a service, and starts it again if it exits with an error: after a restart on existing
# data, a replicated consumer can take longer to answer than a service waits at startup. Ctrl-C
# (TERM to the loop) stops the service.
# Usage: start <service> <http address> [partition].
start() {
  local name="$1" http="$2" part="${3:-}" instance="$1"
  [[ -n "$part" ]] && instance="$name-p$part"
  (
    export FX_DATA_DIR="$dir/$instance" FX_HTTP_ADDR="$http" RUST_LOG="${RUST_LOG:-info}"
    [[ -n "$part" ]] && export FX_PARTITION="$part"
    child=0
    trap 'if ((child)); then kill -TERM "$child" 2>/dev/null; wait "$child"; fi; exit 0' TERM INT
    for attempt in 1 2 3 4 5; do
      "$bin/fx-$name" &
      child=$!
      echo "$child" >"$dir/$instance.pid"
      if wait "$child"; then exit 0; fi
      echo "cluster.sh: fx-$instance exited with an error; starting it again (attempt $((attempt + 1)))"
      child=0
      sleep 1
    done
    exit 1
  ) >"$logs/$instance.log" 2>&1 &
  pids+=($!)
  echo "   fx-$instance: http://$http/readyz, pid in ${dir#"$root"/}/$instance.pid, log ${logs#"$root"/}/$instance.log"
}
say "starting $partitions instance(s) each of fx-usd, fx-trade, fx-krw on NATS_URL=$NATS_URL (FX_STREAM_REPLICAS=3, FX_PARTITIONS=$partitions)"
for ((k = 0; k < partitions; k++)); do
  part="$k"
  ((partitions > 1)) || part=""   # one partition: plain fx-<service>, as scripts/run.sh runs it
  start usd "127.0.0.1:91${k}3" $part
  start trade "127.0.0.1:91${k}2" $part
  start krw "127.0.0.1:91${k}1" $part
done
# `fxctl audit` asks every partition's fx-krw and fx-usd.
wait_until "every fx-krw and fx-usd instance" 90 "$fxctl" audit

if ((bench)); then
  out="$root/docs/bench/cluster.jsonl"
  tag="\"cluster\":\"3 nodes R3\",\"partitions\":$partitions"
  say "saturation: $sagas sagas, concurrency $concurrency, with the null-saga baseline"
  line="$("$fxctl" --json bench --sagas "$sagas" --concurrency "$concurrency" --baseline | tail -1)"
  echo "{$tag,${line#\{}" | tee -a "$out"
  say "offered load $rate sagas/s for 10 s"
  line="$("$fxctl" --json bench --rate "$rate" --duration 10 | tail -1)"
  echo "{$tag,${line#\{}" | tee -a "$out"
  for f in "$dir"/*.pid; do
    pid="$(cat "$f")"
    echo "{$tag,\"rss_kib\":{\"instance\":\"$(basename "$f" .pid)\",\"kib\":$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")}}" | tee -a "$out"
  done
  exit 0
fi
# The tracker reads FX, which the services create: start it once they answer.
start tracker "127.0.0.1:$tracker_port"
wait_until "fx-tracker" 30 port_open 127.0.0.1 "$tracker_port"

# alice and bob land in different partitions when there are two (events::partition_of).
for user in alice bob; do
  if [[ "$("$fxctl" balance --user "$user" --json | grep -c '"krw_available": "0"')" == 1 ]]; then
    say "seeding demo account $user"
    "$fxctl" --actor cluster.sh deposit --user "$user" --krw 5000000
  fi
  say "a sample exchange for $user"
  "$fxctl" exchange --user "$user" --krw 100000 --wait || true
done

cat <<TXT

  Dashboard:   http://127.0.0.1:$tracker_port/
  Cluster:     $NATS_URL   (FX and FX_DLQ are R3; data and logs in .fx/cluster/)
  Partitions:  $partitions (FX stores fx.<domain>.<event>.<user>.<partition>; instance k consumes
               partition k; fxctl routes admin requests to the user's instance by itself)
  Leaders:     curl -s 'http://127.0.0.1:8222/jsz?accounts=true&streams=true'

  Try next (in another shell):
    export NATS_URL=$NATS_URL
    $fxctl exchange --user alice --krw 250000 --wait
    $fxctl balance --user alice
    $fxctl audit
  Kill one node (its pid is above) and exchange again: the others elect a new leader.
  Kill one instance: only the users of its partition wait (with 2 partitions bob is in 0, alice
  in 1), and this script starts it again a second later:
    kill -9 "\$(cat .fx/cluster/krw-p0.pid)"; $fxctl exchange --user alice --krw 1000 --wait

  Ctrl-C stops everything this script started.
TXT
wait
