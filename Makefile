# Two entry points (see README "Quick start"): `make demo` and `make test`.
# Each creates .venv from the requirements when it is missing or older than them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/quickstart

.PHONY: demo test bench clean-demo

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: $(VENV)/.runtime
	$(PY) train.py --config=configs/quickstart.py --workdir=$(WORKDIR)
	$(PY) analyze.py --workdir=$(WORKDIR)

test: $(VENV)/.dev
	$(PY) -m pytest -q tests

$(VENV)/.bench: $(VENV)/.dev requirements-bench.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	touch $@

# The README's performance tables (about 45 minutes on 2 CPU cores); JSON under runs/benchmarks/.
bench: $(VENV)/.bench
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_conv.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_layers.py
	$(PY) benchmarks/bench_xla_flags.py

clean-demo:
	rm -rf $(WORKDIR)

# Lint and import order (pyproject.toml [tool.ruff]); the formatter check is `pyink --check .`.
.PHONY: lint
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
