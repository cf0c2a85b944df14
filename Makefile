# carbotui — one way to start anything. `make up` needs root on Debian 12 (apt-get, a
# system user, Dovecot); everything it generates or runs lives in var/ and .venv/.
#   make up      install what is missing, generate var/, start (or update) supervisord, wait
#   make down    stop supervisord and everything it runs; leave no process behind
#   make demo    make up, then print how to connect
#   make test    make up, then pytest (PYTEST_ARGS="-k certs" to pass arguments)
#   make venv    just .venv (no root)

SHELL := /bin/bash
PY    := .venv/bin/python
CTL   := .venv/bin/supervisorctl -c supervisord.conf

.PHONY: up down demo test venv

venv:
	scripts/install-deps.sh --venv-only

up:
	scripts/install-deps.sh
	$(PY) -m carbotui.demo setup
	@# running: apply supervisord.conf changes and start what is stopped; `start all` fails
	@# while a program is FATAL (the proxy, until workers/ exists), so `demo wait` judges.
	@if $(CTL) pid >/dev/null 2>&1; then \
	    $(CTL) update && { $(CTL) start all || true; }; \
	else \
	    .venv/bin/supervisord -c supervisord.conf; \
	fi
	$(PY) -m carbotui.demo wait

down:
	@if [[ -x $(PY) ]]; then $(PY) -m carbotui.demo down; else echo "no .venv: nothing to stop"; fi

demo: up
	@$(PY) -m carbotui.demo summary

test: up
	$(PY) -m pytest $(PYTEST_ARGS)
