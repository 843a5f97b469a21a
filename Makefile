# Two commands do all the set-up on a fresh machine:
#   make demo   - the main job on an embedded default: a lab of network namespaces, servers and real
#                 traffic, with `beiand run` on its gateway (needs root)
#   make test   - the whole test suite (installs what it needs: Python packages into .venv, Debian tools)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test lint bench clean

# The compiled twin of the hot path (issue 21): pip builds it with the system compiler, so gcc and the
# Python headers come first; an edit to a compiled module's source rebuilds it (beiand/extensions.py).
HOT_PATH := $(shell grep -o '^    "beiand\.[a-z._]*",$$' beiand/extensions.py | sed 's/[ ",]//g; s,\.,/,g; s/$$/.py/')

$(VENV)/.installed: pyproject.toml setup.py $(HOT_PATH) $(wildcard beiand/*/*.pxd)
	PYTHON=$(PYTHON) ./scripts/system-deps build
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	$(VENV)/bin/beiand --version
	touch $@

demo: $(VENV)/.installed
	./scripts/system-deps demo
	$(VENV)/bin/beiand lab

test: $(VENV)/.installed
	./scripts/system-deps
	$(VENV)/bin/ruff check beiand tests bench dashboards rules
	$(VENV)/bin/mypy beiand
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check beiand tests bench dashboards rules
	$(VENV)/bin/mypy beiand
	$(VENV)/bin/lint-imports

bench: $(VENV)/.installed
	./scripts/system-deps
	$(PY) bench/bench_stages.py
	$(PY) bench/bench_records.py
	$(PY) bench/bench_replay.py
	$(PY) bench/bench_accesslog.py
	$(PY) bench/bench_audit.py
	$(PY) bench/bench_live.py --dense
	$(PY) bench/bench_enforce.py

clean:
	rm -rf $(VENV) build *.egg-info
