#!/usr/bin/env bash
# A local 3-node JetStream cluster on loopback and the four services on it, for trying the
# saga with replicated (R3) streams. Ctrl-C stops everything it started.
#
#   nodes n0 n1 n2   clients 127.0.0.1:4222/4223/4224, monitoring :8222/8223/8224,
#                    routes :6222/6223/6224, cluster name fx, JetStream data .fx/cluster/n<i>
#   services         NATS_URL lists all three nodes, FX_STREAM_REPLICAS=3, data under
#                    .fx/cluster/<service>, logs in .fx/cluster/logs/
#
# No broker auth here (unlike scripts/run.sh): the cluster is for trying replication on one
# machine. Kill a node to watch a new leader take over; the services and fxctl reconnect to the
# others:
#   curl -s 'http://127.0.0.1:8222/jsz?accounts=true&streams=true'   # who leads FX
#   kill <the pid this script prints for that node>
# Partitioned service instances (issue 9) are not implemented yet: one instance of each.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

dir="$root/.fx/cluster"
logs="$dir/logs"
tracker_port="${FX_TRACKER_PORT:-8080}"
client_ports=(4222 4223 4224)
monitor_ports=(8222 8223 8224)
route_ports=(6222 6223 6224)
mkdir -p "$logs"

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
bin="$root/target/release"
fxctl="$bin/fxctl"
nats_bin="$(scripts/ensure-nats.sh)"

urls=""
for i in 0 1 2; do urls+="${urls:+,}nats://127.0.0.1:${client_ports[$i]}"; done
export NATS_URL="$urls" FX_STREAM_REPLICAS=3
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
start() {
  local name="$1" http="$2"
  (
    export FX_DATA_DIR="$dir/$name" FX_HTTP_ADDR="$http" RUST_LOG="${RUST_LOG:-info}"
    child=0
    trap 'if ((child)); then kill -TERM "$child" 2>/dev/null; wait "$child"; fi; exit 0' TERM INT
    for attempt in 1 2 3 4 5; do
      "$bin/fx-$name" &
      child=$!
      if wait "$child"; then exit 0; fi
      echo "cluster.sh: fx-$name exited with an error; starting it again (attempt $((attempt + 1)))"
      child=0
      sleep 1
    done
    exit 1
  ) >"$logs/$name.log" 2>&1 &
  pids+=($!)
}
say "starting fx-krw, fx-trade, fx-usd, fx-tracker on NATS_URL=$NATS_URL with FX_STREAM_REPLICAS=3"
start usd 127.0.0.1:9103
start trade 127.0.0.1:9102
start krw 127.0.0.1:9101
wait_until "fx-krw and fx-usd" 60 "$fxctl" audit
# The tracker reads FX, which the services create: start it once they answer.
start tracker "127.0.0.1:$tracker_port"
wait_until "fx-tracker" 30 port_open 127.0.0.1 "$tracker_port"

if [[ "$("$fxctl" balance --user alice --json | grep -c '"krw_available": "0"')" == 1 ]]; then
  say "seeding demo account alice"
  "$fxctl" --actor cluster.sh deposit --user alice --krw 5000000
fi
say "a sample exchange"
"$fxctl" exchange --user alice --krw 100000 --wait || true

cat <<TXT

  Dashboard:   http://127.0.0.1:$tracker_port/
  Cluster:     $NATS_URL   (FX and FX_DLQ are R3; data and logs in .fx/cluster/)
  Leaders:     curl -s 'http://127.0.0.1:8222/jsz?accounts=true&streams=true'

  Try next (in another shell):
    export NATS_URL=$NATS_URL
    $fxctl exchange --user alice --krw 250000 --wait
    $fxctl balance --user alice
    $fxctl audit
  Kill one node (its pid is above) and exchange again: the others elect a new leader.

  Ctrl-C stops everything this script started.
TXT
wait
