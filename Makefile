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

# Two worker processes, each taking whole test files (module fixtures stay in one process).
test: $(VENV)/.dev
	$(PY) -m pytest -q -n 2 --dist loadfile tests

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

# Lint and import order, then the formatter's check (pyproject.toml [tool.ruff], [tool.pyink]);
# `.venv/bin/pyink .` applies the formatting.
.PHONY: lint
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pyink --check .
