# Two entry points (see README "Quick start"): `make demo` and `make test`.
# Each creates .venv from the requirements when it is missing or older than them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/quickstart

.PHONY: demo test bench study confirm confirm-ablation clean-demo pod-check

# -qq: pip's errors only (a machine's pip.conf can add a warning per package otherwise).
PIP_INSTALL := $(PY) -m pip install -qq --disable-pip-version-check

$(VENV)/.runtime: requirements.txt
	@echo "Installing requirements.txt into $(VENV) (a minute or more the first time) ..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP_INSTALL) -r requirements.txt
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	@echo "Installing requirements-dev.txt (the test and lint tools) ..."
	@$(PIP_INSTALL) -r requirements-dev.txt
	@touch $@

demo: $(VENV)/.runtime
	$(PY) train.py --config=configs/quickstart.py --workdir=$(WORKDIR)
	$(PY) analyze.py --workdir=$(WORKDIR)

# Two worker processes, each taking whole test files (module fixtures stay in one process).
test: $(VENV)/.dev
	$(PY) -m pytest -q -n 2 --dist loadfile tests

$(VENV)/.bench: $(VENV)/.dev requirements-bench.txt
	$(PIP_INSTALL) -r requirements-bench.txt
	touch $@

# The README's performance tables (about 50 minutes on 2 CPU cores); JSON under runs/benchmarks/.
bench: $(VENV)/.bench
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_conv.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_layers.py
	$(PY) benchmarks/bench_xla_flags.py
	$(PY) benchmarks/bench_replicas.py --rounds=2
	$(PY) benchmarks/bench_tap_fusion.py

# The CPU-scale study (results/cpu30, about 80 minutes on 2 cores): 3 families x 2 datasets x
# 3 seeds, plus the constant-learning-rate control, one run per seed (on CPU, packing seeds
# into replicas is no faster and compiles as long: README "Several seeds in one program");
# the same command resumes an interrupted sweep, then regenerates the report from the finished runs.
DATA_DIR ?= ../shared/data
STUDY_ROOT ?= runs/cpu30
# JAX's persistent compilation cache: the per-epoch probe programs (2-3 s each to compile)
# are loaded by every later run of the same shapes.
study: export JAX_COMPILATION_CACHE_DIR ?= $(HOME)/.cache/dynamics_jax
study: $(VENV)/.runtime
	$(PY) sweep.py --models=resnet18,vgg16,vit_tiny --datasets=cifar10,cifar100 --scale=cpu30 \
	    --seeds=0,1,2 --controls=resnet18:cifar10 \
	    --root=$(STUDY_ROOT) --data_dir=$(DATA_DIR)
	$(PY) analyze.py --runs=$(STUDY_ROOT) --out=results/cpu30

# The confirmatory study (results/confirm/PLAN.md): 36 runs, about 11.5 hours on 2 cores.
# Resumable: finished runs are skipped, an interrupted one resumes from its checkpoint; each
# finished run's compact artefacts are copied to results/confirm/runs/ and committed at once
# (--commit), so the study accumulates in the repository; the report is regenerated from them.
# The runs train with the code of CONFIRM_CODE (a git worktree under runs/), not with the
# working tree's, so that code moved or changed later cannot change a pre-registered study
# half-way through.
CONFIRM_ROOT ?= runs/confirm
CONFIRM_CODE ?= b6f88f54b60f9c46a14cb305d1ac9bd61be956ac
CONFIRM_TREE := runs/confirm-code
confirm: export JAX_COMPILATION_CACHE_DIR ?= $(HOME)/.cache/dynamics_jax
confirm: $(VENV)/.runtime
	@test -d $(CONFIRM_TREE) || git worktree add --detach $(CONFIRM_TREE) $(CONFIRM_CODE)
	cd $(CONFIRM_TREE) && $(abspath $(PY)) sweep.py --design=confirm \
	    --root=$(abspath $(CONFIRM_ROOT)) --data_dir=$(abspath $(DATA_DIR)) \
	    --export=$(abspath results/confirm/runs) --commit
	$(PY) analyze.py --runs=results/confirm/runs --out=results/confirm

# The study's findings under every definition of a grid (analyze.py ablate; a few minutes).
CONFIRM_GRID := dfa_min_scale=3,4 dfa_max_divisor=2,3 integration_method=per_layer_mean,mean_field \
    phase_preprocess=detrend,demean,diff,bandpass phase_edge=0,8 window=128,96 \
    dsi_form=product,linear convergence_rho=0.25,0.4 convergence_patience=3,5 \
    volatility_window_steps=25,40
confirm-ablation: $(VENV)/.runtime
	$(PY) analyze.py ablate --runs=results/confirm/runs --out=results/confirm/ablation \
	    $(addprefix --grid=,$(CONFIRM_GRID))

clean-demo:
	rm -rf $(WORKDIR)

# libtpu through the jax[tpu] extra at the venv's own jax version (requirements-tpu.txt names
# the version this was tested with; a clean clone may resolve a newer jax from requirements.txt).
$(VENV)/.tpu: $(VENV)/.runtime requirements-tpu.txt
	@echo "Installing libtpu (jax[tpu] at the installed jax; compiles TPU programs, no TPU needed) ..."
	@$(PIP_INSTALL) "jax[tpu]==$$($(PY) -c 'import importlib.metadata as m; print(m.version("jax"))')"
	@touch $@

# Compiles the train step, eval step and probe for TPU pod topologies on this machine and prints
# per-device memory, flops, bytes and the compiler's step time (docs/pod.md; the table in
# benchmarks/README.md). Compiler estimates: nothing runs on a TPU. About an hour on 2 CPU cores.
pod-check: $(VENV)/.tpu
	$(PY) benchmarks/pod_compile.py --out=results/performance/pod_compile.json

# Lint and import order, then the formatter's check (pyproject.toml [tool.ruff], [tool.pyink]);
# `.venv/bin/pyink .` applies the formatting.
.PHONY: lint
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pyink --check .
