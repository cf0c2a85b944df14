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
# real mail clients the integration tests drive through the proxy (tests/stack/test_real_clients.py)
PACKAGES+=(isync fetchmail neomutt getmail6)
# HTTP/2 clients for the web tests (nghttp, h2load; curl --http2 is curl itself)
PACKAGES+=(nghttp2-client)
# setfacl/getfacl: a checkout under a private (0700) folder gets ACL entries for the demo's
# users instead of `chmod o+x` (demo/stack.py, reach_checkout)
PACKAGES+=(acl)
# a C compiler and Python's headers: mypyc compiles the per-session modules (setup.py)
PACKAGES+=(gcc libc6-dev python3-dev)
SERVICES=(memcached slapd dovecot haproxy fetchmail)   # what those packages would start at install and boot
MAIL_USER=carbotui-mail              # owns var/mbox*/mail; Dovecot's userdb uses it
STAMP=.venv/.carbotui-installed      # newer than pyproject.toml = dependencies are current

log() { echo "install-deps: $*"; }

system_packages() {
    local packages=("${PACKAGES[@]}")
    # Debian's python3 keeps venv/ensurepip in a separate package
    python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)
    scripts/apt-install.sh --disable "${SERVICES[*]}" "${packages[@]}"
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
