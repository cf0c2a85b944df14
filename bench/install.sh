#!/usr/bin/env bash
# What `make bench` needs besides the demo stack (`make up` installs that): Debian's nginx
# with the mail module (the reference proxy), wrk (the HTTP(S) load generator) and valgrind
# (bench/instructions.py), linux-perf and h2load (nghttp2-client); py-spy into .venv (the
# profiles bench/run.py takes of the workers).
# Idempotent and quick when everything is present (no apt-get then). Needs root to install.
# nginx is only ever run by bench/run.py, in the foreground, from var/bench/nginx/nginx.conf;
# the system service the package would start is never started and disabled if it was.
set -euo pipefail

PACKAGES=(nginx libnginx-mod-mail wrk valgrind linux-perf nghttp2-client)
log() { echo "bench/install: $*"; }

cd "$(dirname "$0")/.."
scripts/apt-install.sh --disable nginx "${PACKAGES[@]}"
[ -x .venv/bin/py-spy ] || .venv/bin/pip install --quiet py-spy
log "installed: $(nginx -v 2>&1), $(dpkg-query -W -f='wrk ${Version}' wrk), $(.venv/bin/py-spy --version)"
