# Two commands for a fresh clone with only python3 and make:
#   make run   - set up .venv and start the demo (proxy on :8080, metrics on :9090)
#   make test  - set up .venv, run the whole trial suite and type-check poolproxy/ (mypy)
#   make test-pypy - the same suite on PyPy (Debian's pypy3), in .venv-pypy
#   make test-redis-py - redis-py's own tests against redis-server and through poolproxy
#   make bench - bench/run.py: poolproxy against twemproxy, HAProxy, PgBouncer and Twisted's proxies
SHELL := /bin/bash
PYTHON ?= python3
PYPY ?= pypy3
VENV ?= .venv
PYPY_VENV ?= .venv-pypy
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYPY_STAMP := $(PYPY_VENV)/.installed
# Two trial workers: most interop tests wait on real servers and clients, so
# two processes on this 2-core machine take .ci/run from 19.7 to 12.7
# minutes (test-pypy alone: 9.6 to 6.0).  TRIAL_ARGS=tests runs them one by one.
TRIAL_ARGS ?= -j2 tests

.PHONY: run test venv venv-pypy test-pypy test-redis-py bench clean

venv: $(STAMP)

# editable_mode=compat puts the checkout itself on sys.path, which is how
# Twisted's plugin system finds twisted/plugins/poolproxy_plugin.py.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' \
		--config-settings editable_mode=compat
	touch $@

venv-pypy: $(PYPY_STAMP)

$(PYPY_STAMP): setup.cfg pyproject.toml
	@command -v $(PYPY) >/dev/null || { echo "make test-pypy needs $(PYPY) (Debian: apt-get install pypy3)"; exit 1; }
	$(PYPY) -m venv $(PYPY_VENV)
	$(PYPY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' \
		--config-settings editable_mode=compat
	touch $@

run: $(STAMP)
	@echo "poolproxy demo: curl http://127.0.0.1:8080/   metrics: http://127.0.0.1:9090/metrics   (Ctrl-C stops)"
	$(BIN)/twistd --nodaemon --pidfile= --reactor=poolproxy-epoll poolproxy --protocol http \
		--listen tcp:8080:interface=127.0.0.1 \
		--demo tcp:8081:interface=127.0.0.1 \
		--metrics tcp:9090:interface=127.0.0.1 \
		--pool-size 10 --pool-min-idle 2

# The trial suite, then mypy over poolproxy/ (setup.cfg [mypy]); either failing fails.
test: $(STAMP)
	set -o pipefail; $(BIN)/python -m twisted.trial $(TRIAL_ARGS) 2>&1 | tee _trial_temp.out; \
		status=$$?; $(BIN)/python tools/trial_summary.py _trial_temp.out; \
		if $(BIN)/python -c 'import mypy' 2>/dev/null; then $(BIN)/python -m mypy poolproxy || status=1; \
		else echo "mypy skipped: it needs Python 3.10 or newer"; fi; exit $$status

test-pypy: $(PYPY_STAMP)
	set -o pipefail; $(PYPY_VENV)/bin/python -m twisted.trial --temp-directory=_trial_temp_pypy \
		$(TRIAL_ARGS) 2>&1 | tee _trial_temp_pypy.out; \
		status=$$?; $(PYPY_VENV)/bin/python tools/trial_summary.py _trial_temp_pypy.out; exit $$status

# redis-py's own test suite (the installed version's) against redis-server and
# through the proxy; every test that passes directly must pass through it, but
# those the default deny_commands refuses (docs/security.md).
test-redis-py: $(STAMP)
	$(BIN)/python tools/redis_py_suite.py

# Needs the Debian packages bench/run.py lists; PyPy runs too when pypy3 is installed.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'matplotlib >= 3.5'
	if command -v $(PYPY) >/dev/null; then $(MAKE) venv-pypy; fi
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(PYPY_VENV) _trial_temp* _redis_py_suite .cache build dist *.egg-info \
		twisted/plugins/dropin.cache
