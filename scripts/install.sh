#!/usr/bin/env bash
# `make install`: a production carbotui node in the system's places (Debian 12, as root).
#
#   /opt/carbotui/                 the code: a virtualenv of Debian's python3, the project
#                                  installed from this tree as a wheel (not editable)
#   /usr/local/bin/carbotui        the command (reads /etc/carbotui/carbotui.toml by default)
#   /etc/carbotui/carbotui.toml    the settings, from etc/production/carbotui.toml the first
#                                  time only; never overwritten (0640 root:carbotui)
#   /var/lib/carbotui, /var/log/carbotui, /run/carbotui   owned by the carbotui system user
#   /etc/supervisor/conf.d/carbotui.conf                  Debian's supervisor: the workers
#                                                         (one per core), auditwatch, metrics
#   /usr/local/lib/systemd/system/carbotui*.{service,target}  the same for systemd
#   /usr/local/lib/tmpfiles.d/carbotui.conf               /run/carbotui at boot
#   /etc/logrotate.d/carbotui                             rotation, then SIGUSR1
#
# Idempotent: a second run with the same tree changes nothing (the virtualenv is rebuilt only
# when the tree's files differ from what was installed, a file is written only when its
# content differs). When Debian's supervisord is running and `carbotui check` passes, the node
# is started (or updated; workers restarted one at a time after a code change). It never
# starts a service otherwise: it says what to fill in. CARBOTUI_WORKERS=N overrides the core
# count. Undo: `make uninstall` (scripts/uninstall.sh).
set -euo pipefail
umask 022                        # /opt/carbotui must be readable by the carbotui user
cd "$(dirname "$0")/.."
TREE=$(pwd)

VENV=/opt/carbotui
CONFIG_DIR=/etc/carbotui
CONFIG=$CONFIG_DIR/carbotui.toml
VAR_DIR=/var/lib/carbotui
LOG_DIR=/var/log/carbotui
RUN_DIR=/run/carbotui
BIN=/usr/local/bin/carbotui
SUPERVISOR_CONF=/etc/supervisor/conf.d/carbotui.conf
SYSTEMD_DIR=/usr/local/lib/systemd/system
TMPFILES=/usr/local/lib/tmpfiles.d/carbotui.conf
LOGROTATE=/etc/logrotate.d/carbotui
# Debian's supervisord, never one found by supervisorctl's search (./supervisord.conf: the
# demo's, in a checkout)
SUPERVISORCTL=(supervisorctl -c /etc/supervisor/supervisord.conf)
USER_NAME=carbotui
PYTHON=/usr/bin/python3          # Debian's: every user may run it (not a pyenv under /root)
STAMP=$VENV/.carbotui-source     # what the virtualenv was built from
WORKERS=${CARBOTUI_WORKERS:-$(nproc)}
SRC=etc/production

log() { echo "install: $*"; }
changed=0                        # anything written in this run
code_changed=0

[[ $(id -u) == 0 ]] || { log "needs root (a system user, /opt, /etc); run: sudo make install"; exit 1; }
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || { log "CARBOTUI_WORKERS must be a positive number, got '$WORKERS'"; exit 1; }

# --- Python and the system user ------------------------------------------------------------

python_ok() { "$PYTHON" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
if ! python_ok; then
    [[ -x $PYTHON ]] || scripts/apt-install.sh python3
    scripts/apt-install.sh python3-venv
    python_ok || { log "$PYTHON is $("$PYTHON" -V 2>&1); carbotui needs 3.11 or newer with venv"; exit 1; }
fi

if ! id -u "$USER_NAME" >/dev/null 2>&1; then
    log "creating system user $USER_NAME"
    adduser --quiet --system --group --no-create-home --home "$VAR_DIR" \
        --gecos "carbotui proxy workers" "$USER_NAME"
    changed=1
fi

# --- directories -----------------------------------------------------------------------------

# directory PATH MODE OWNER:GROUP -- made or corrected; says so only when it did something
directory() {
    local path=$1 mode=$2 owner=$3
    if [[ ! -d $path ]]; then
        install -d -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$path"
        log "made $path ($mode $owner)"
        changed=1
    elif [[ $(stat -c '%a %U:%G' "$path") != "${mode#0} $owner" ]]; then
        chmod "$mode" "$path"
        chown "$owner" "$path"
        log "set $path to $mode $owner"
        changed=1
    fi
}
directory "$CONFIG_DIR" 0750 root:$USER_NAME   # the workers read the settings and keys here
directory "$VAR_DIR" 0750 $USER_NAME:$USER_NAME
directory "$LOG_DIR" 0750 $USER_NAME:$USER_NAME
directory "$RUN_DIR" 0750 $USER_NAME:$USER_NAME

# --- the code --------------------------------------------------------------------------------

# pip, quiet; without the warnings some machines' pip.conf provokes (find-links to
# folders that do not exist), which are harmless
pip() {
    "$VENV/bin/python" -m pip -q --disable-pip-version-check --no-cache-dir "$@" 2>&1 |
        { grep -v "^WARNING: Location 'file://.*' is ignored" || true; }
    return "${PIPESTATUS[0]}"
}

# Everything the wheel is built from, and the Python that runs it.
source_id() {
    {
        "$PYTHON" -V 2>&1
        find pyproject.toml setup.py mypyc.ini README.md carbotui -type f \
            ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '*.so' \
            -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
}
want=$(source_id)
if [[ ! -x $VENV/bin/python || ! -e $STAMP || $(cat "$STAMP") != "$want" ]]; then
    start=$SECONDS
    if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        log "creating the virtualenv $VENV ($("$PYTHON" -V))"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    # A wheel from a copy of the tree: nothing is written into the checkout (build/, egg-info).
    # setup.py and mypyc.ini: the build compiles the per-session modules with mypyc (pure
    # Python without a compiler, or with CARBOTUI_PURE=1); a checkout's own in-place build
    # (*.so) is left behind, the wheel's are built from the sources.
    cp -a pyproject.toml setup.py mypyc.ini README.md carbotui "$build/"
    find "$build" -name __pycache__ -prune -exec rm -rf {} +
    find "$build" -name '*.so' -delete
    log "building the wheel and installing it into $VENV"
    pip wheel --no-deps -w "$build/dist" "$build"
    wheel=$(ls "$build"/dist/carbotui-*.whl)
    # dependencies first, then the project itself again even if its version did not change
    pip install "$wheel"
    pip install --force-reinstall --no-deps "$wheel"
    echo "$want" >"$STAMP"
    log "code installed in $((SECONDS - start)) s"
    changed=1
    code_changed=1
fi

# --- files -----------------------------------------------------------------------------------

# put CONTENT PATH MODE [OWNER:GROUP] -- written only when the content or mode differs
put() {
    local content=$1 path=$2 mode=$3 owner=${4:-root:root}
    if [[ -f $path && $(cat "$path") == "$content" &&
          $(stat -c '%a %U:%G' "$path") == "${mode#0} $owner" ]]; then
        return 1
    fi
    mkdir -p "$(dirname "$path")"
    local tmp
    tmp=$(mktemp "$path.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$path"
    log "wrote $path"
    changed=1
}

# the template with this install's places filled in
render() {
    local wants="carbotui-auditwatch.service carbotui-metrics.service" i
    for ((i = 0; i < WORKERS; i++)); do wants+=" carbotui-proxy@$i.service"; done
    sed -e "s|@VENV@|$VENV|g" -e "s|@CONFIG@|$CONFIG|g" -e "s|@VAR_DIR@|$VAR_DIR|g" \
        -e "s|@LOG_DIR@|$LOG_DIR|g" -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@WORKERS@|$WORKERS|g" \
        -e "s|@WANTS@|$wants|g" "$1"
}

put "#!/bin/sh
# carbotui (installed by make install): the dashboard and the admin commands of this node.
# The settings: \$CARBOTUI_CONFIG, else $CONFIG.
CARBOTUI_CONFIG=\"\${CARBOTUI_CONFIG:-$CONFIG}\"
export CARBOTUI_CONFIG
exec $VENV/bin/carbotui \"\$@\"" "$BIN" 0755 || true

# The settings: the template the first time; the admin's file after that, whatever it holds.
if [[ ! -e $CONFIG ]]; then
    put "$(cat "$SRC/carbotui.toml")" "$CONFIG" 0640 root:$USER_NAME
    log "new settings in $CONFIG: fill in the ADMIN lines"
else
    log "kept $CONFIG"
fi
# the template stays at hand (new keys of a newer version show up here)
put "$(cat "$SRC/carbotui.toml")" "$VENV/share/carbotui.toml.example" 0644 || true

services=0
if put "$(render "$SRC/supervisor-carbotui.conf")" "$SUPERVISOR_CONF" 0644; then services=1; fi
units=0
for unit in "$SRC"/systemd/*; do
    if put "$(render "$unit")" "$SYSTEMD_DIR/$(basename "$unit")" 0644; then units=1; fi
done
put "$(render "$SRC/tmpfiles.conf")" "$TMPFILES" 0644 || true
put "$(render "$SRC/logrotate")" "$LOGROTATE" 0644 || true
command -v logrotate >/dev/null || log "note: logrotate is not installed (apt-get install logrotate)"

# --- start, or say how -----------------------------------------------------------------------

systemd_running() { [[ -d /run/systemd/system ]]; }
supervisord_running() { command -v supervisorctl >/dev/null && "${SUPERVISORCTL[@]}" pid >/dev/null 2>&1; }

if systemd_running; then
    if ((units)); then systemctl daemon-reload; fi
    systemd-tmpfiles --create "$TMPFILES" || true
fi

if ! problems=$(CARBOTUI_CONFIG=$CONFIG "$VENV/bin/carbotui" check 2>&1); then
    log "$CONFIG is not complete yet; nothing started:"
    sed 's/^/    /' <<<"$problems"
    log "fill it in, check it with \`carbotui check\`, then start the node:"
    log "    supervisorctl update          (Debian's supervisor: apt-get install supervisor)"
    log "    systemctl enable --now carbotui.target    (or systemd: one of the two)"
elif supervisord_running; then
    # adds the programs, or restarts them when their definition changed
    "${SUPERVISORCTL[@]}" update carbotui carbotui-metrics
    if ((code_changed && !services)); then
        # the same definitions, new code: one worker at a time, the others keep serving
        for name in $("${SUPERVISORCTL[@]}" status 'carbotui:*' | awk '$2 == "RUNNING" {print $1}'); do
            "${SUPERVISORCTL[@]}" restart "$name" >/dev/null
        done
        "${SUPERVISORCTL[@]}" restart carbotui-metrics >/dev/null || true
        log "restarted the node on the new code"
    fi
elif systemd_running && systemctl -q is-enabled carbotui.target 2>/dev/null; then
    if ((code_changed || units)); then systemctl restart carbotui.target; fi
else
    log "settings OK; start the node with \`supervisorctl update\` (supervisor) or"
    log "\`systemctl enable --now carbotui.target\` (systemd)"
fi

if ((changed)); then
    log "done"
else
    log "nothing to do: already installed from this tree"
fi
