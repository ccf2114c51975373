#!/usr/bin/env bash
# Writes a nats CLI context per broker identity of config/nats.conf: fx-admin, fx-client, fx-krw,
# fx-trade, fx-usd, fx-tracker, each with the broker's URL, the identity's password and its
# inbox prefix _INBOX_<identity> (the config lets every identity read replies only there).
# Then `nats --context fx-admin stream ls` just works.
#
# Reads NATS_URL and FX_NATS_PASSWORD_<IDENTITY> from the environment (scripts/run.sh calls it
# with .fx/nats-passwords.env). Writes where the nats CLI reads contexts,
# ${XDG_CONFIG_HOME:-$HOME/.config}/nats/context/fx-<identity>.json, mode 600 (they hold the
# passwords), replacing only these six files; the selected context is left as it is.
set -euo pipefail

: "${NATS_URL:?NATS_URL must name the broker}"
dir="${XDG_CONFIG_HOME:-$HOME/.config}/nats/context"
umask 077
mkdir -p "$dir"
for id in admin client krw trade usd tracker; do
  var="FX_NATS_PASSWORD_${id^^}"
  [[ -n "${!var:-}" ]] || { echo "nats-contexts: $var is not set" >&2; exit 1; }
  # Passwords are letters and digits (config/nats.conf), so nothing here needs JSON escaping.
  printf '{\n  "description": "fx-saga broker as %s (scripts/run.sh)",\n  "url": "%s",\n  "user": "%s",\n  "password": "%s",\n  "inbox_prefix": "_INBOX_%s"\n}\n' \
    "$id" "$NATS_URL" "$id" "${!var}" "$id" >"$dir/fx-$id.json.tmp"
  chmod 600 "$dir/fx-$id.json.tmp"
  mv "$dir/fx-$id.json.tmp" "$dir/fx-$id.json"
done
echo "nats contexts fx-admin, fx-client, fx-krw, fx-trade, fx-usd, fx-tracker in $dir"
