# The two commands: `make run` (start the server) and `make test` (everything CI runs).
# Both create .venv and install the project first. See README.md.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
# Reinstall only when pyproject.toml changes (or the venv is new).
STAMP := $(VENV)/.installed
# These lie on local disk for Python 3.11, so they install in about a minute. Naming them in
# every pip call stops pip from choosing another torch (a multi-GB download).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# What the tests need from Debian: speech fixtures, audio tools, the browser, network namespaces,
# and the reverse proxy and TURN server of the deployment tests.
TEST_APT_PACKAGES := espeak-ng sox chromium iproute2 libportaudio2 pulseaudio nginx coturn
ARGS ?=

# $(call apt_ensure,PACKAGES): install the Debian packages that are missing, and nothing else.
# `apt-get update` runs at most once, and only when something is missing.
define apt_ensure
	@missing=""; \
	for pkg in $(1); do \
	  dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null; then echo "missing system packages:$$missing (no apt-get here)" >&2; exit 1; fi; \
	  sudo=""; if [ "$$(id -u)" -ne 0 ]; then sudo="sudo"; fi; \
	  echo "installing system packages:$$missing"; \
	  $$sudo apt-get update -q; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
endef

.PHONY: help run test lint format bench fixtures tiny system-deps venv clean gpu-check gpu-wheels

help:
	@echo "make run        create .venv, install, start the server (prints the URL to open); ARGS='--model tiny' etc."
	@echo "make test       install (system packages too), ruff lint + format check, the whole pytest suite"
	@echo "make lint       ruff check and ruff format --check only"
	@echo "make format     apply ruff's fixes and formatting"
	@echo "make bench      latency benchmark (scripts/bench_latency.py)"
	@echo "make fixtures   regenerate tests/fixtures (needs espeak-ng)"
	@echo "make tiny       build or refresh the cached tiny random-weight checkpoint that --model auto uses"
	@echo "make gpu-wheels fetch the wheels the bare GPU machine lacks into .whl/ (scripts/gpu_wheels.txt)"
	@echo "make gpu-check  on a CUDA machine: every GPU path in one run (scripts/gpu_check.sh; ARGS=--dry-run on CPU)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install --progress-bar off $(TORCH_PINS)
	$(PIP) install --progress-bar off -e '.[all,test]' $(TORCH_PINS)
	$(BIN)/python -c 'import torch; v = torch.__version__.split("+")[0]; assert v == "2.14.1", f"pip chose torch {v}"'
	touch $@

venv: $(STAMP)

system-deps:
	$(call apt_ensure,$(TEST_APT_PACKAGES))

run: $(STAMP)
	$(BIN)/assistant serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# pytest exits 5 when it collected no tests; here that means the suite is broken, not green.
test: system-deps $(STAMP) lint
	@rc=0; HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(ARGS) || rc=$$?; \
	if [ "$$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	exit "$$rc"

bench: $(STAMP)
	$(BIN)/python scripts/bench_latency.py $(ARGS)

fixtures: $(STAMP)
	$(call apt_ensure,espeak-ng)
	$(BIN)/python scripts/make_fixtures.py

tiny: $(STAMP)
	$(BIN)/python -m assistant.modelres tiny $(ARGS)

# GPU check (issue 17). gpu-check needs no venv: the GPU machine brings torch and installs the rest from .whl/.
gpu-wheels:
	scripts/gpu_check.sh --prepare-wheels

gpu-check:
	scripts/gpu_check.sh $(ARGS)

clean:
	rm -rf .pytest_cache .ruff_cache build dist
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
