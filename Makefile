# carbotui — one way to start anything. `make up` needs root on Debian 12 (apt-get, a
# system user, Dovecot); everything it generates or runs lives in var/ and .venv/.
#   make up      install what is missing, generate var/, start (or update) supervisord, wait
#   make down    stop supervisord and everything it runs; leave no process behind
#   make demo    make up, open the dashboard; on quitting it, print how to connect
#   make screenshots  regenerate screenshots/ (every dashboard screen, SVG)
#   make test    make up, then pytest (PYTEST_ARGS="-k certs" to pass arguments)
#   make venv    just .venv (no root)
#   make compiled  rebuild the mypyc-compiled modules whose .py changed (setup.py)
#   make cluster make up, then two more nodes (127.0.0.11/.12) behind HAProxy (127.0.0.1:20143…)
#   make install    a production node in the system's places (/opt/carbotui, /etc/carbotui, a
#                   supervisor program file and systemd units); a second run changes nothing
#   make uninstall  remove it all but the settings (/etc/carbotui) and the logs

SHELL := /bin/bash
PY    := .venv/bin/python
CTL   := .venv/bin/supervisorctl -c supervisord.conf
# what `make up` keeps running (`make cluster` adds haproxy, node1, node2)
SERVICES := memcached slapd mbox1 mbox2 web1 web2 'proxy:*' metrics

.PHONY: up down demo test venv cluster screenshots

venv:
	scripts/install-deps.sh --venv-only

up:
	scripts/install-deps.sh
	$(PY) -m demo.stack setup
	@# running: apply supervisord.conf changes and start what is stopped (not the cluster);
	@# a start that fails is reported by `demo wait`, which names what is not up.
	@if $(CTL) pid >/dev/null 2>&1; then \
	    $(CTL) update && { $(CTL) start $(SERVICES) 2>&1 | grep -v "already started" || true; }; \
	else \
	    .venv/bin/supervisord -c supervisord.conf; \
	fi
	$(PY) -m demo.stack wait

down:
	@if [[ -x $(PY) ]]; then $(PY) -m demo.stack down; else echo "no .venv: nothing to stop"; fi

demo: up
	.venv/bin/carbotui
	@$(PY) -m demo.stack summary

# every dashboard screen as SVG in screenshots/, from deterministic data
screenshots: venv
	$(PY) scripts/screenshots.py

test: up compiled
	$(PY) -m pytest $(PYTEST_ARGS)

# the modules setup.py compiles with mypyc, rebuilt in place when a source is newer than
# the last build (carbotui/core/compiled.py runs them as Python meanwhile); no mypyc in
# .venv, or CARBOTUI_PURE=1: nothing is compiled and the .py files run
MYPYC_SRC := $(shell sed -n 's/^    "\(carbotui\/[a-z0-9_/]*\.py\)",$$/\1/p' setup.py)
# interpreted modules whose declared types compiled code checks values against
# (mail.py and routes.py: MailServer, Account; routes.py, throttle.py: Memcache, ThrottleSettings;
# stats.py: worker_sockets' SessionQuery and constants, nodes.PUBLISH_EVERY)
MYPYC_TYPES := carbotui/backends/directory.py carbotui/backends/memcache.py carbotui/core/settings.py \
	carbotui/backends/worker_sockets.py carbotui/services/nodes.py
.PHONY: compiled
compiled: build/mypyc.stamp
build/mypyc.stamp: $(MYPYC_SRC) $(MYPYC_TYPES) setup.py mypyc.ini | venv
	@# pip's editable install (make venv) has just built them in place: not a second time
	@$(PY) scripts/compiled_fresh.py $(MYPYC_SRC) -- $(MYPYC_TYPES) setup.py mypyc.ini || \
		$(PY) setup.py -q build_ext --inplace
	@mkdir -p build && touch $@

cluster: up
	$(CTL) start haproxy 'node1:*' 'node2:*'
	$(PY) -m demo.stack wait --cluster

# carbotui side by side with nginx (bench/): installs nginx + its mail module and wrk,
# runs every load against both, writes bench/results/latest.{json,md} (about 9 minutes)
.PHONY: bench
bench: up
	bench/install.sh
	$(PY) bench/run.py

# a production node from this tree (root, Debian 12): scripts/install.sh says what goes where
.PHONY: install uninstall
install:
	scripts/install.sh

uninstall:
	scripts/uninstall.sh
