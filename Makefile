# Two commands on a fresh machine: `make demo`, `make test`. Both create .venv as needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench install clean-venv

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: moe-tui needs Python 3.11 or newer ($(PYTHON) is $$($(PYTHON) -V 2>&1)); run make PYTHON=python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-installs only when the dependencies change; torch comes from the constraints pin.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

# Queue the demo pipeline (long-tail experts -> logits -> gates, and m-height
# data -> experts -> sparse MoE; a few minutes on a 2-core CPU) and watch it in
# the TUI (without a terminal, wait for it and print the run table instead).
demo: install
	$(BIN)/moe-tui pipeline demo
	@if [ -t 0 ] && [ -t 1 ]; then $(BIN)/moe-tui; else $(BIN)/moe-tui wait && $(BIN)/moe-tui ls; fi

# Two workers, a test file each at a time (the Slurm tests share one cluster, so they stay in
# one file on one worker). One thread per process: two workers' jobs share the cores, and
# OpenMP threads spinning on a busy core make a small conv 100x slower.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile

# The inner loop: tests/unit only (no subprocess training, daemon, Slurm or tmux).
test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile tests/unit

bench: install
	$(BIN)/python -m benchmarks

clean-venv:
	rm -rf $(VENV)
