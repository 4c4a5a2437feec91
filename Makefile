# mtl-celeba: `make help` lists the targets. Every target that runs code installs first.
SHELL := /bin/bash
UV ?= uv
RUN := $(UV) run --frozen
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup train test test-fast lint format synth tensorboard clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: .venv/.installed ## install uv if missing, then the locked environment (uv sync --frozen)

.venv/.installed: pyproject.toml uv.lock
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

train: setup ## train with the defaults (DST, ResNet18, synthetic CelebA); extra Hydra overrides in ARGS="..."
	$(RUN) mtl-train $(ARGS)

test: setup ## run the whole test suite, slow end-to-end cases included
	$(RUN) pytest $(ARGS)

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

tensorboard: setup ## open TensorBoard on outputs/
	$(RUN) tensorboard --logdir outputs

clean: ## remove run outputs and generated data (keeps the environment)
	rm -rf outputs/* data/
