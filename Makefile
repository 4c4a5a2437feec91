# mtl-celeba: `make help` lists the targets. Every target that runs code installs first.
SHELL := /bin/bash
UV ?= uv
RUN := $(UV) run --frozen
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup train test test-fast lint format synth tensorboard reproduce bench gpu-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: .venv/.installed ## install uv if missing, then the locked environment (uv sync --frozen)

# --compile-bytecode: the packages are compiled once here (about 25 s on 2 cores). Where
# PYTHONDONTWRITEBYTECODE is set (this project's machines and CI) Python would otherwise compile
# torch, torchvision and Lightning from source at every start: 18 s to import them instead of 6 s
# on a 2-core CPU, paid by every run, sweep job and test subprocess.
.venv/.installed: pyproject.toml uv.lock Makefile
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode
	@touch $@

train: setup ## train with the defaults (DST, ResNet18, synthetic CelebA); extra Hydra overrides in ARGS="..."
	$(RUN) mtl-train $(ARGS)

# `make test` adds the `ray` extra (hydra-ray-launcher and Ray, about 300 MB) and the `mlflow`
# extra (MLflow and its SQL store, about 270 MB) so the Ray sweep and the MLflow read-back tests
# run too; `uv run` installs them into .venv on first use. (The `wandb` extra is not needed:
# its test checks the config only.) It also installs the distribution's chromium where missing,
# for report.html's browser test (tests/test_report_html.py).
test: setup ## run the whole test suite, slow end-to-end cases included (with the ray and mlflow extras)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && (apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null; } || echo "chromium not installed (needs root and apt-get): the report.html browser test will skip"
	$(RUN) --extra ray --extra mlflow --compile-bytecode pytest $(ARGS)

test-fast: setup ## run the tests without the slow end-to-end cases
	$(RUN) pytest -m "not slow" $(ARGS)

lint: setup ## ruff check and format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: setup ## ruff fix and format
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

synth: setup ## write a synthetic CelebA: ARGS="--out DIR --num-images N --seed S"
	$(RUN) mtl-synth $(ARGS)

# `make reproduce`: the canonical grids (dst_vs_baselines, drop_metrics) and their report.
# Without CELEBA: the CPU protocol, synthetic CelebA with a network and a scale built for a
# 2-core CPU (docs/training.md, 'The CPU protocol: make reproduce without CelebA'):
# model=cpu_cnn (Adam at 3e-3) at 32 px, 10,200 images (test split 1,005), 8 epochs of 64
# batches of 32, the same grids and seeds as on CelebA;
# the grids' model list gives way to model=cpu_cnn, so 125 jobs. `make bench ARGS=--sweep`
# estimates its wall time on your machine before you run it.
# With CELEBA=/path: the full-scale protocol on real CelebA, one GPU per job with AMP.
# The sweeps go to a fixed folder per scale, so running `make reproduce` again resumes: the
# grids skip the jobs that completed there (skip_completed) and rerun failed or unfinished ones.
CELEBA ?=
REPRODUCE_DIR ?= outputs/reproduce/$(if $(CELEBA),celeba,synthetic)
ifeq ($(CELEBA),)
REPRODUCE_SCALE := model=cpu_cnn data.num_images=10200 data.image_size=32 data.batch_size=32 \
	trainer.max_epochs=8 +trainer.limit_train_batches=64 trainer.enable_progress_bar=false
else
REPRODUCE_SCALE := data=celeba data.root=$(CELEBA) trainer=gpu trainer.max_epochs=15 \
	hydra/launcher=gpu_pool
endif

reproduce: setup ## run the canonical grids and write the comparison report (CELEBA=/path for real data)
	@echo "Sweeps and report go to $(REPRODUCE_DIR) (estimate the wall time first: make bench ARGS=--sweep)"
	-$(RUN) mtl-train experiment=dst_vs_baselines hydra.sweep.dir=$(REPRODUCE_DIR)/dst_vs_baselines $(REPRODUCE_SCALE) $(ARGS)
	-$(RUN) mtl-train experiment=drop_metrics hydra.sweep.dir=$(REPRODUCE_DIR)/drop_metrics $(REPRODUCE_SCALE) $(ARGS)
	$(RUN) mtl-report $(REPRODUCE_DIR)
	@echo "Report: $(REPRODUCE_DIR)/report.md"

bench: setup ## training throughput: a plain PyTorch loop vs the fast and naive pipelines, DST vs MTL (ARGS="...")
	$(RUN) mtl-bench $(ARGS)

# `make gpu-check`: every GPU figure in at most 8 minutes, into outputs/gpu_check/ (see
# docs/performance.md, 'GPU check: make gpu-check'). No `setup`: a GPU machine may have no
# internet; it runs with the checkout's .venv if there is one, else with python3 (PY=...).
PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
gpu-check: ## all GPU figures in at most 8 minutes: gpu_check.json and .md (ARGS="--parts ...")
	$(PY) mtl_celeba/bench/gpu_check.py $(ARGS)

tensorboard: setup ## open TensorBoard on outputs/
	$(RUN) tensorboard --logdir outputs

clean: ## remove run outputs and generated data (keeps the environment)
	rm -rf outputs/* data/
