# Two commands do all the set-up on a fresh machine:
#   make demo   - the main job on an embedded default: a lab of network namespaces, servers and real
#                 traffic, with `beiand run` on its gateway (needs root)
#   make test   - the whole test suite (installs what it needs: Python packages into .venv, Debian tools)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
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
	$(PY) bench/bench_records.py
	$(PY) bench/bench_replay.py
	$(PY) bench/bench_accesslog.py
	$(PY) bench/bench_audit.py
	$(PY) bench/bench_live.py --dense
	$(PY) bench/bench_enforce.py

clean:
	rm -rf $(VENV) build *.egg-info
