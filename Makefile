# nanolab: every target creates or reuses ./.venv. torch is pinned in the same pip command as the rest,
# so pip takes the CPU wheel on disk instead of several GB of CUDA wheels.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.nanolab-installed

.PHONY: setup quickstart test test-all test-slow bench browser

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)" -e ".[dev,plot]"
	touch $(STAMP)

# The main job: fetch Debian Rust sources, build the dataset, train engram-v1 (tiny on CPU, full on a GPU),
# then score the final checkpoint with tree-sitter and held-out loss. Re-running continues an interrupted run
# and skips a finished one. On a CPU the run compiles itself (auto: >= 200 steps; falls back to eager if it fails).
quickstart: setup
	test -d runs/engram-v1/final || $(BIN)/nanotrain run engram-v1 --resume auto
	$(BIN)/nanoeval score --ckpt runs/engram-v1/final --out runs/engram-v1/score.json

# Fast tests (a few minutes on 2 cores). Slow tests: make test-slow.
test: setup
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m "slow" -q

test-all: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_train.py --device cpu
	$(BIN)/python benchmarks/bench_train.py --device cpu --compile --out benchmarks/results/bench_train_cpu_compiled.json
	$(BIN)/python benchmarks/bench_decode.py --device cpu
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
