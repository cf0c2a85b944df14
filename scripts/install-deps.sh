#!/usr/bin/env bash
# Install what `make up` needs on Debian 12: the demo's system services (run later by
# supervisord, never as system services), a system user for the demo maildirs, and .venv.
# Idempotent, and quick when everything is present (no apt-get, no pip).
#
#   scripts/install-deps.sh              everything (root)
#   scripts/install-deps.sh --venv-only  just .venv (no root needed)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(memcached slapd ldap-utils dovecot-imapd dovecot-pop3d haproxy curl openssl tmux)
SERVICES=(memcached slapd dovecot haproxy)   # what those packages would start at install and boot
MAIL_USER=carbotui-mail              # owns var/mbox*/mail; Dovecot's userdb uses it
STAMP=.venv/.carbotui-installed      # newer than pyproject.toml = dependencies are current

log() { echo "install-deps: $*"; }

system_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    # Debian's python3 keeps venv/ensurepip in a separate package
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    ((${#missing[@]})) || return 0

    log "installing ${missing[*]}"
    # Debian starts a package's service at install. A policy-rc.d that exits 101 tells
    # invoke-rc.d not to; ours is removed again (an existing one, e.g. Docker's, is kept).
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# carbotui install-deps: start nothing during apt-get install\nexit 101\n' \
            >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Belt and braces: nothing from the package install may keep running or start at boot
    # (a system Dovecot would also listen on 143/110, which the proxy serves in production).
    local s
    for s in "${SERVICES[@]}"; do
        if [[ -d /run/systemd/system ]]; then
            systemctl disable --now "$s" >/dev/null 2>&1 || true
        else
            service "$s" stop >/dev/null 2>&1 || true
        fi
    done
}

mail_user() {
    id -u "$MAIL_USER" >/dev/null 2>&1 && return 0
    log "creating system user $MAIL_USER"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "carbotui demo mailboxes" "$MAIL_USER"
}

kernel_tuning() {
    # A restarting SO_REUSEPORT worker hands its accept queue to the others instead of
    # resetting those connections (Linux >= 5.14). Best effort: containers may forbid it.
    [[ "$(sysctl -n net.ipv4.tcp_migrate_req 2>/dev/null)" == 1 ]] && return 0
    sysctl -qw net.ipv4.tcp_migrate_req=1 >/dev/null 2>&1 ||
        log "warning: could not set net.ipv4.tcp_migrate_req=1 (worker restarts may reset queued connections)"
}

python_venv() {
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        { log "python3 is $(python3 -V 2>&1); carbotui needs 3.11 or newer"; exit 1; }
    [[ -x .venv/bin/python ]] || { log "creating .venv"; python3 -m venv .venv; }
    if [[ ! -e $STAMP || pyproject.toml -nt $STAMP ]]; then
        log "pip install -e '.[test]'"
        .venv/bin/python -m pip install -q -e '.[test]'
        touch "$STAMP"
    fi
}

if [[ "${1:-}" != --venv-only ]]; then
    [[ $(id -u) == 0 ]] || { log "needs root (apt-get, useradd, sysctl); or use --venv-only"; exit 1; }
    system_packages
    mail_user
    kernel_tuning
fi
python_venv
