#!/usr/bin/env bash
# Install Debian packages that are missing, without letting them start system services:
#   scripts/apt-install.sh [--disable "svc svc…"] PACKAGE…
# Quick when everything is present (no apt-get then). Used by scripts/install-deps.sh
# (the demo stack) and bench/install.sh (nginx, wrk). Needs root only when installing.
set -euo pipefail

disable=()
if [[ "${1:-}" == "--disable" ]]; then
    read -r -a disable <<<"$2"
    shift 2
fi
log() { echo "apt-install: $*"; }

missing=()
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -ne 0 ]]; then
    log "missing ${missing[*]}; run as root (apt-get install ${missing[*]})" >&2
    exit 1
fi

log "installing ${missing[*]}"
# Debian starts a package's service at install. A policy-rc.d that exits 101 tells
# invoke-rc.d not to; ours is removed again (an existing one, e.g. Docker's, is kept).
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# carbotui apt-install: start nothing during apt-get install\nexit 101\n' \
        >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Belt and braces: none of these may keep running or start at boot (a system Dovecot or
# nginx would take the ports the proxy serves in production).
for s in "${disable[@]}"; do
    if [[ -d /run/systemd/system ]]; then
        systemctl disable --now "$s" >/dev/null 2>&1 || true
    else
        service "$s" stop >/dev/null 2>&1 || true
        update-rc.d "$s" disable >/dev/null 2>&1 || true
    fi
done
