#!/usr/bin/env bash
# What `make bench` needs besides the demo stack (`make up` installs that): Debian's nginx
# with the mail module (the reference proxy) and wrk (the HTTP(S) load generator).
# Idempotent and quick when everything is present (no apt-get then). Needs root to install.
# nginx is only ever run by bench/run.py, in the foreground, from var/bench/nginx/nginx.conf;
# the system service the package would start is never started and disabled if it was.
set -euo pipefail

PACKAGES=(nginx libnginx-mod-mail wrk)
log() { echo "bench/install: $*"; }

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
((${#missing[@]})) || exit 0

if [[ $(id -u) -ne 0 ]]; then
    echo "bench/install: missing ${missing[*]}; run as root (apt-get install ${missing[*]})" >&2
    exit 1
fi
log "installing ${missing[*]}"
# Debian starts a package's service at install; a policy-rc.d that exits 101 forbids it.
# Ours is removed again; an existing one (e.g. Docker's) is kept.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# carbotui bench/install.sh: start nothing during apt-get install\nexit 101\n' \
        >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Belt and braces: no system nginx may keep running or start at boot (it would take port 80).
if [[ -d /run/systemd/system ]]; then
    systemctl disable --now nginx >/dev/null 2>&1 || true
else
    service nginx stop >/dev/null 2>&1 || true
    update-rc.d nginx disable >/dev/null 2>&1 || true
fi
log "installed: $(nginx -v 2>&1), $(dpkg-query -W -f='wrk ${Version}' wrk)"
