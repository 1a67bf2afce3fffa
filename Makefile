# nanolab: every target creates or reuses ./.venv. torch is pinned in the same pip command as the rest,
# so pip takes the CPU wheel on disk instead of several GB of CUDA wheels.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.nanolab-installed

.PHONY: setup quickstart lint test test-all test-slow bench browser data-quality gpu-wheels

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)" -e ".[app,metrics,hf,plot,dev]"
	touch $(STAMP)

# The main job: fetch Debian Rust sources, build the dataset, train engram-v1 (tiny on CPU, full on a GPU),
# then score the final checkpoint with tree-sitter and held-out loss. Re-running continues an interrupted run
# and skips a finished one. On a CPU the run compiles itself (auto: >= 200 steps; falls back to eager if it fails).
quickstart: setup
	test -d runs/engram-v1/final || $(BIN)/nanotrain run engram-v1 --resume auto
	$(BIN)/nanoeval score --ckpt runs/engram-v1/final --out runs/engram-v1/score.json

# The dataset of benchmarks/bench_quality.py: the popular crates plus 400 others (seeded); split by file it held
# 24.1M training tokens in 49 MiB, small enough to travel with the code to a GPU machine. About 3-4 minutes on 2 cores; a second call does nothing.
DATA    ?= $${NANOLAB_DATA:-data}
data-quality: setup
	test -f $(DATA)/datasets/rust-quality/meta.json || ( \
	  $(BIN)/nanotrain data fetch-debian --out $(DATA)/sources/debian-quality --crates popular+400 --seed 0 && \
	  $(BIN)/nanotrain data build --src $(DATA)/sources/debian-quality --out $(DATA)/datasets/rust-quality )

# Wheels the GPU image lacks (its python3 is 3.12): tree-sitter for `nanoeval score`. Carry .whl to the machine.
gpu-wheels: setup
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  --platform manylinux1_x86_64 -d .whl tree-sitter==0.26.1 tree-sitter-rust==0.24.2

# Lint (ruff: pyflakes, pycodestyle, import order; settings in pyproject.toml), then the fast tests (a few minutes
# on 2 cores). Slow tests: make test-slow.
lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m "slow" -q

test-all: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_train.py --device cpu
	$(BIN)/python benchmarks/bench_train.py --device cpu --compile --out benchmarks/results/bench_train_cpu_compiled.json
	$(BIN)/python benchmarks/bench_decode.py --device cpu
	$(BIN)/python benchmarks/bench_linear.py
	$(BIN)/python benchmarks/bench_score.py

# Debian chromium for the browser test of the demo (needs root / apt).
browser:
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

# Re-measure the regression goldens (tests/regression) and show the diff; nothing is written.
# To accept an intended change: $(BIN)/python -m tests.regression.regenerate --write
.PHONY: goldens
goldens: setup
	$(BIN)/python -m tests.regression.regenerate

# The original four-run session (sessions/seed.toml) at tiny scale on this machine, then its markdown report.
# Re-running continues it: finished runs are skipped, interrupted ones resume.
.PHONY: session-tiny
session-tiny: setup
	$(BIN)/nanotrain session sessions/seed.toml --scale tiny
	$(BIN)/nanoeval report --session runs/seed
