# Quick start: `make demo` (set up + one default migration), `make test` (set up + every test).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
QEMU   := $(shell command -v qemu-system-x86_64 2>/dev/null)

.PHONY: setup system-deps demo test lint bench bench-qemu soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Real QEMU 7.2 is the migration peer of the interop tests; install it when we can (root + apt).
# QEMU 10.0 (Debian bookworm-backports) is fetched and unpacked into a cache, never installed.
system-deps: setup
	@if [ -z "$(QEMU)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing qemu-system-x86 (interop peer)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 qemu-utils >/dev/null; \
	  else \
	    echo "qemu-system-x86_64 not found and not root: QEMU interop tests will skip (sudo apt-get install qemu-system-x86)"; \
	  fi; \
	fi
	@$(PY) -m qatmig_engine.qemu.fetch || echo "QEMU 10.0 not fetched: its interop tests will skip"

demo: setup
	$(VENV)/bin/qatmig migrate --guest-size 256M --multifd-channels 2 --multifd-compression zstd

test: setup system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 -p qatmig tests

lint: setup
	$(VENV)/bin/ruff check .

# Benchmarks write their tables into docs/performance.md with --update-docs (see each --help).
bench: setup
	$(PY) benchmarks/bench_codecs.py
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_standin.py --limit 8M

bench-qemu: setup system-deps
	$(PY) benchmarks/bench_side_by_side.py

soak: setup
	$(PY) benchmarks/soak_fuzz.py --seconds 600

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
