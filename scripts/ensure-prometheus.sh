#!/usr/bin/env bash
# Makes Prometheus and promtool available and prints the prometheus binary's path on stdout;
# exits 1 with a message on stderr where they can't be had (callers then skip, and say so).
#
# Order: $PROMETHEUS_BIN if set (its promtool beside it or on PATH), then `prometheus` and
# `promtool` on PATH, then Debian's `prometheus` package with apt-get when running as root (as
# scripts/test.sh installs chromium and fuse3). Note: on a host with systemd, Debian's package
# also enables its own prometheus.service on :9090; `scripts/run.sh --prometheus` then needs
# FX_PROMETHEUS_PORT set to another port.
set -euo pipefail

if [[ -n "${PROMETHEUS_BIN:-}" ]]; then
  if [[ -x "$PROMETHEUS_BIN" ]]; then echo "$PROMETHEUS_BIN"; exit 0; fi
  echo "ensure-prometheus: PROMETHEUS_BIN=$PROMETHEUS_BIN is not an executable" >&2
  exit 1
fi

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  command -v prometheus; exit 0
fi

if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-prometheus: installing Debian's prometheus package (prometheus, promtool)" >&2
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends prometheus >/dev/null) >&2 \
    && command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    command -v prometheus; exit 0
  fi
  echo "ensure-prometheus: could not install Debian's prometheus package" >&2
  exit 1
fi

echo "ensure-prometheus: prometheus/promtool not installed and apt-get not usable here (not root, or not Debian)" >&2
exit 1
