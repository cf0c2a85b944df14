#!/usr/bin/env bash
# `make uninstall`: undo `make install` (scripts/install.sh). Stops the node (supervisor or
# systemd, then any process still running from /opt/carbotui) and removes the code, the
# command, the service, tmpfiles and logrotate files, /var/lib/carbotui and /run/carbotui.
#
# Kept, as Debian's `apt-get remove` keeps them: the settings (/etc/carbotui: carbotui.toml,
# certificates, secrets), the logs (/var/log/carbotui: audit.log is the login record an
# investigation may still need) and the carbotui system user (its uid may still own files,
# e.g. those logs; a user removed and recreated later could get another uid). Remove them by
# hand when they are no longer wanted: rm -r /etc/carbotui /var/log/carbotui; deluser carbotui.
# Idempotent: a second run finds nothing and says so.
set -euo pipefail

VENV=/opt/carbotui
BIN=/usr/local/bin/carbotui
SUPERVISOR_CONF=/etc/supervisor/conf.d/carbotui.conf
SYSTEMD_DIR=/usr/local/lib/systemd/system
UNITS=(carbotui.target carbotui-auditwatch.service carbotui-metrics.service carbotui-proxy@.service)
TMPFILES=/usr/local/lib/tmpfiles.d/carbotui.conf
LOGROTATE=/etc/logrotate.d/carbotui
# Debian's supervisord, never one found by supervisorctl's search (./supervisord.conf: the
# demo's, in a checkout)
SUPERVISORCTL=(supervisorctl -c /etc/supervisor/supervisord.conf)
VAR_DIR=/var/lib/carbotui
RUN_DIR=/run/carbotui

log() { echo "uninstall: $*"; }
[[ $(id -u) == 0 ]] || { log "needs root; run: sudo make uninstall"; exit 1; }
removed=0

# --- stop the node ---------------------------------------------------------------------------

if [[ -e $SUPERVISOR_CONF ]]; then
    rm -f "$SUPERVISOR_CONF"
    log "removed $SUPERVISOR_CONF"
    removed=1
fi
# Also when the file is gone already (an uninstall cut short): a supervisord that still has
# the programs would restart them as fast as they are stopped below. `update` stops
# (SIGTERM, stopwaitsecs) and forgets the groups whose file is gone.
if command -v supervisorctl >/dev/null && "${SUPERVISORCTL[@]}" pid >/dev/null 2>&1; then
    "${SUPERVISORCTL[@]}" update carbotui carbotui-metrics 2>&1 | grep -v "no such group" || true
fi

if [[ -d /run/systemd/system ]]; then
    for unit in $(systemctl list-units --all --plain --no-legend 'carbotui*' | awk '{print $1}'); do
        systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
    systemctl disable carbotui.target >/dev/null 2>&1 || true
fi

# Whatever still runs the installed code (started by hand, or by a manager that was not
# told): SIGTERM, the drain time, then SIGKILL. Only processes of /opt/carbotui.
installed_pids() {
    local pid
    for pid in $(pgrep -f "^$VENV/bin/" || true); do
        [[ $pid != "$$" ]] && echo "$pid"
    done
}
pids=$(installed_pids)
if [[ -n $pids ]]; then
    log "stopping what still runs from $VENV: $(echo $pids)"
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 450; i++)); do
        [[ -z $(installed_pids) ]] && break
        sleep 0.1
    done
    pids=$(installed_pids)
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
fi

# --- remove the files ------------------------------------------------------------------------

gone() {
    local path
    for path in "$@"; do
        if [[ -e $path || -L $path ]]; then
            rm -rf -- "$path"
            log "removed $path"
            removed=1
        fi
    done
}
gone "$BIN" "$VENV" "$TMPFILES" "$LOGROTATE" "$VAR_DIR" "$RUN_DIR"
for unit in "${UNITS[@]}"; do gone "$SYSTEMD_DIR/$unit"; done
if [[ -d /run/systemd/system ]]; then systemctl daemon-reload; fi
# folders make install may have made for its files, when nothing else lives there
for dir in "$SYSTEMD_DIR" /usr/local/lib/tmpfiles.d /usr/local/lib/systemd /etc/supervisor/conf.d /etc/supervisor; do
    if [[ -d $dir ]] && ! dpkg -S "$dir" >/dev/null 2>&1; then
        rmdir --ignore-fail-on-non-empty "$dir"
    fi
done

kept=()
for path in /etc/carbotui /var/log/carbotui; do [[ -e $path ]] && kept+=("$path"); done
if ((removed)); then
    log "done; kept ${kept[*]:-nothing} and the carbotui user"
else
    log "nothing to remove (not installed)"
fi
