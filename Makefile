# Two commands for a fresh clone with only python3 and make:
#   make run   - set up .venv and start the demo (proxy on :8080, metrics on :9090)
#   make test  - set up .venv and run the whole trial suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRIAL_ARGS ?= tests

.PHONY: run test venv clean

venv: $(STAMP)

# editable_mode=compat puts the checkout itself on sys.path, which is how
# Twisted's plugin system finds twisted/plugins/poolproxy_plugin.py.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' \
		--config-settings editable_mode=compat
	touch $@

run: $(STAMP)
	@echo "poolproxy demo: curl http://127.0.0.1:8080/   metrics: http://127.0.0.1:9090/metrics   (Ctrl-C stops)"
	$(BIN)/twistd --nodaemon --pidfile= poolproxy --protocol http \
		--listen tcp:8080:interface=127.0.0.1 \
		--demo tcp:8081:interface=127.0.0.1 \
		--metrics tcp:9090:interface=127.0.0.1 \
		--pool-size 10 --pool-min-idle 2

test: $(STAMP)
	set -o pipefail; $(BIN)/python -m twisted.trial $(TRIAL_ARGS) 2>&1 | tee _trial_temp.out; \
		status=$$?; $(BIN)/python tools/trial_summary.py _trial_temp.out; exit $$status

clean:
	rm -rf $(VENV) _trial_temp* build dist *.egg-info twisted/plugins/dropin.cache
