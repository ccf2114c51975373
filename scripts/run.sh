#!/usr/bin/env bash
# The one-command local run: builds, starts a broker (or uses $NATS_URL), the venue fx-venue
# (or uses $FX_VENUE_URL), the four services,
# seeds demo accounts, runs sample exchanges ending COMPLETED, COMPENSATED and REJECTED, prints
# what to open and try, and keeps running. Ctrl-C stops everything it started.
#
# Data lives under ./.fx/ (git-ignored) and is reused: running it twice continues where the
# first run stopped.
#
# --prometheus also starts a Prometheus on loopback (FX_PROMETHEUS_PORT, default 9090) that
# scrapes every process and evaluates the alert rules of config/prometheus/ (its data in
# .fx/prometheus; installed from Debian's package where it can be, skipped with a message where
# it can't).
#
# The broker it starts runs config/nats.conf: no anonymous access, one identity per process
# (docs/security.md). Dev passwords are generated on the first run into
# ./.fx/nats-passwords.env (mode 600, never committed) and reused. With $NATS_URL, the broker
# and its credentials are yours: every process gets your NATS_USER/NATS_PASSWORD/NATS_CREDS.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

fx_dir="$root/.fx"
logs="$fx_dir/logs"
tracker_port="${FX_TRACKER_PORT:-8080}"
nats_port="${FX_NATS_PORT:-4222}"
venue_port="${FX_VENUE_PORT:-9104}"
mkdir -p "$logs"

script=run.sh
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

with_prometheus=0
for arg in "$@"; do
  case "$arg" in
    --prometheus) with_prometheus=1 ;;
    -h | --help)
      echo "usage: scripts/run.sh [--prometheus]"
      exit 0
      ;;
    *) die "unknown option $arg (usage: scripts/run.sh [--prometheus])" ;;
  esac
done
prometheus_port="${FX_PROMETHEUS_PORT:-9090}"

say "building (release)"
cargo build --release --quiet -p krw -p trade -p usd -p tracker -p fxctl -p venue
# Where cargo put the build: $CARGO_TARGET_DIR when set, else ./target.
bin="${CARGO_TARGET_DIR:-$root/target}/release"
fxctl="$bin/fxctl"

passwords="$fx_dir/nats-passwords.env"
identities=(krw trade usd tracker client admin)

# A dev password: letters and digits, starting with a letter (nats.conf parses the value).
new_password() {
  if command -v openssl >/dev/null 2>&1; then
    printf 'fx%s' "$(openssl rand -hex 24)"
  else
    printf 'fx%s' "$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
  fi
}

# Creates .fx/nats-passwords.env on the first run (mode 600), then reads it into shell
# variables that are NOT exported: only nats-server gets all six; each process gets its own.
load_passwords() {
  if [[ ! -s "$passwords" ]]; then
    say "generating dev broker passwords into .fx/nats-passwords.env (mode 600)"
    (
      umask 077
      for id in "${identities[@]}"; do
        printf 'FX_NATS_PASSWORD_%s=%s\n' "${id^^}" "$(new_password)"
      done >"$passwords.tmp"
      mv "$passwords.tmp" "$passwords"
    )
  fi
  chmod 600 "$passwords"
  # shellcheck disable=SC1090
  . "$passwords"
  local var
  for id in "${identities[@]}"; do
    var="FX_NATS_PASSWORD_${id^^}"
    [[ -n "${!var:-}" ]] || die "$var is missing or empty in $passwords; remove the file to regenerate it"
  done
}

# Removes every identity's password from a child's environment.
forget_passwords() {
  local id
  for id in "${identities[@]}"; do unset "FX_NATS_PASSWORD_${id^^}"; done
}

# In a subshell about to exec a process of identity $1: its credentials (when this script
# manages them; with a broker of yours, the environment stays as it is), no other password.
become() {
  if ((use_identities)); then
    local var="FX_NATS_PASSWORD_${1^^}"
    export NATS_USER="$1" NATS_PASSWORD="${!var}"
    forget_passwords
  fi
}
use_identities=0

if [[ -n "${NATS_URL:-}" ]]; then
  say "using the broker at NATS_URL=$NATS_URL (its credentials: NATS_USER/NATS_PASSWORD or NATS_CREDS)"
else
  export NATS_URL="nats://127.0.0.1:$nats_port"
  if port_open 127.0.0.1 "$nats_port"; then
    say "a broker already listens on $nats_port; using it"
    if [[ -s "$passwords" ]]; then
      load_passwords
      use_identities=1
    fi
  else
    load_passwords
    use_identities=1
    nats_bin="$(scripts/ensure-nats.sh)"
    say "starting nats-server on $nats_port with config/nats.conf (JetStream store in .fx/nats, monitoring on 127.0.0.1:8222)"
    (
      set -a
      # shellcheck disable=SC1090
      . "$passwords"
      exec "$nats_bin" -c config/nats.conf -js -a 127.0.0.1 -p "$nats_port" -m 8222 -sd "$fx_dir/nats"
    ) >"$logs/nats.log" 2>&1 &
    pids+=($!)
    wait_until "nats-server" 20 port_open 127.0.0.1 "$nats_port"
  fi
fi

# A nats CLI context per identity (fx-admin, fx-client, ...) for this broker, with its inbox
# prefix: `nats --context fx-admin stream ls` (docs/clients.md).
if ((use_identities)); then
  (
    set -a
    # shellcheck disable=SC1090
    . "$passwords"
    exec scripts/nats-contexts.sh
  ) | while read -r line; do say "$line"; done
fi

# Each service runs as the identity of the same name. The subshell execs it, so $! is the
# service's own pid and Ctrl-C stops it.
start() {
  local name="$1" http="$2"
  (
    become "$name"
    export FX_DATA_DIR="$fx_dir/$name" FX_HTTP_ADDR="$http" RUST_LOG="${RUST_LOG:-info}"
    exec "$bin/fx-$name"
  ) >"$logs/$name.log" 2>&1 &
  pids+=($!)
}
# fxctl as an operator (deposit, balance, freeze, audit) or as a user (exchange).
admin() { (become admin; exec "$fxctl" "$@"); }
client() { (become client; exec "$fxctl" "$@"); }
# fx-venue, the liquidity provider fx-trade orders from over HTTP (docs/venue.md). It talks to
# no broker, so it gets no credentials; the FX_VENUE_* market knobs of this environment
# (rate, volatility, seed, latency, failure rate) reach it as they are. With FX_VENUE_URL set,
# fx-trade uses that venue instead and none is started.
if [[ -n "${FX_VENUE_URL:-}" ]]; then
  say "using the venue at FX_VENUE_URL=$FX_VENUE_URL"
else
  port_open 127.0.0.1 "$venue_port" \
    && die "port $venue_port is taken (an fx-venue left running?); stop it, or set FX_VENUE_PORT or FX_VENUE_URL"
  say "starting fx-venue on 127.0.0.1:$venue_port (order book in .fx/venue)"
  (
    forget_passwords
    unset NATS_URL NATS_USER NATS_PASSWORD NATS_CREDS
    export FX_DATA_DIR="$fx_dir/venue" FX_HTTP_ADDR="127.0.0.1:$venue_port" RUST_LOG="${RUST_LOG:-info}"
    exec "$bin/fx-venue"
  ) >"$logs/venue.log" 2>&1 &
  pids+=($!)
  wait_until "fx-venue" 30 port_open 127.0.0.1 "$venue_port"
  export FX_VENUE_URL="http://127.0.0.1:$venue_port"
fi

say "starting fx-krw, fx-trade, fx-usd, fx-tracker (logs in .fx/logs/)"
start usd 127.0.0.1:9103
start trade 127.0.0.1:9102
start krw 127.0.0.1:9101
start tracker "127.0.0.1:$tracker_port"
wait_until "fx-krw and fx-usd" 60 admin audit
wait_until "fx-tracker" 30 port_open 127.0.0.1 "$tracker_port"

if [[ "$(admin balance --user alice --json | grep -c '"krw_available": "0"')" == 1 ]]; then
  say "seeding demo accounts alice, bob, carol"
  admin --actor run.sh deposit --user alice --krw 5000000
  admin --actor run.sh deposit --user bob --krw 3000000
  admin --actor run.sh deposit --user carol --krw 2000000
else
  say "demo accounts exist (data reused from .fx/)"
fi

prometheus_line=""
if ((with_prometheus)); then
  if prometheus_bin="$(scripts/ensure-prometheus.sh)"; then
    port_open 127.0.0.1 "$prometheus_port" \
      && die "port $prometheus_port is taken (another Prometheus?); set FX_PROMETHEUS_PORT"
    # The config as shipped, with the addresses this run uses and the rules by absolute path.
    mkdir -p "$fx_dir/prometheus"
    venue_target="${FX_VENUE_URL#*://}"
    venue_target="${venue_target%%/*}"
    sed -e "s|127.0.0.1:8080|127.0.0.1:$tracker_port|" \
        -e "s|127.0.0.1:9104|$venue_target|" \
        -e "s|^  - alerts.yml|  - $root/config/prometheus/alerts.yml|" \
        config/prometheus/prometheus.yml >"$fx_dir/prometheus/prometheus.yml"
    say "starting Prometheus on 127.0.0.1:$prometheus_port (config/prometheus, data in .fx/prometheus)"
    "$prometheus_bin" --config.file="$fx_dir/prometheus/prometheus.yml" \
      --storage.tsdb.path="$fx_dir/prometheus/data" \
      --web.listen-address="127.0.0.1:$prometheus_port" >"$logs/prometheus.log" 2>&1 &
    pids+=($!)
    wait_until "Prometheus" 30 port_open 127.0.0.1 "$prometheus_port"
    prometheus_line="
  Prometheus:  http://127.0.0.1:$prometheus_port/alerts   (rules: config/prometheus/alerts.yml; runbook: docs/runbook.md)"
  else
    say "Prometheus is not available here; running without it (see the message above)"
  fi
fi

say "sample exchanges"
echo "-- alice sells 1,500,000 KRW (ends COMPLETED):"
client exchange --user alice --krw 1500000 --min-usd 1000.00 --wait || true
echo "-- carol's USD account is frozen, so the credit fails and everything is reversed (COMPENSATED):"
admin --actor run.sh freeze --user carol >/dev/null
client exchange --user carol --krw 700000 --wait || true
admin --actor run.sh unfreeze --user carol >/dev/null
echo "-- bob asks for more than he has (REJECTED):"
client exchange --user bob --krw 9000000 --wait || true

if ((use_identities)); then
  creds_hint="
  Broker identities (config/nats.conf, docs/security.md): load the dev passwords, then pick one:
    set -a; . .fx/nats-passwords.env; set +a
    export NATS_USER=admin NATS_PASSWORD=\$FX_NATS_PASSWORD_ADMIN     # deposit, balance, audit, dlq, tail
    export NATS_USER=client NATS_PASSWORD=\$FX_NATS_PASSWORD_CLIENT   # exchange only
  The nats CLI: contexts fx-admin, fx-client (and one per service) hold them, with the inbox
  prefix each identity must use (docs/clients.md): nats --context fx-admin stream ls
"
  pub_ctx=" --context fx-client"
else
  creds_hint=""
  pub_ctx=""
fi

cat <<TXT

  Dashboard:   http://127.0.0.1:$tracker_port/
  JSON API:    http://127.0.0.1:$tracker_port/api/sagas   /api/stats   /metrics
  Broker:      $NATS_URL   (data in .fx/, logs in .fx/logs/)
  Venue:       $FX_VENUE_URL/v1/executions   (docs/venue.md)$prometheus_line
$creds_hint
  Try next:
    $fxctl exchange --user alice --krw 250000 --wait
    $fxctl balance --user alice
    $fxctl audit
    nats$pub_ctx pub --jetstream fx.exchange.requested.alice '{"saga_id":"'"\$(cat /proc/sys/kernel/random/uuid)"'","user_id":"alice","krw_amount":"100000"}'

  Ctrl-C stops everything this script started.
TXT
wait
