# Quick start: `make demo` (set up + one default migration), `make test` (set up + every test).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
QEMU   := $(shell command -v qemu-system-x86_64 2>/dev/null)

.PHONY: setup system-deps demo test lint bench bench-qemu soak clean

# pip and setuptools talk a lot (and this machine's pip config adds warnings of its own): the
# install log goes to a file, shown only when the install fails.
$(STAMP): pyproject.toml setup.py
	@echo "setting up $(VENV) (pip log: $(VENV)/install.log)"
	@$(PYTHON) -m venv $(VENV)
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install -e '.[test]'; } \
	  >$(VENV)/install.log 2>&1 || { tail -n 30 $(VENV)/install.log; \
	  echo "setup failed: the whole log is $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

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
	@# TLS tests and docs make their x509 test certificates with the openssl command.
	@if ! command -v openssl >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing openssl (TLS test certificates)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl >/dev/null; \
	  else \
	    echo "openssl not found and not root: TLS tests will skip (sudo apt-get install openssl)"; \
	  fi; \
	fi

demo: setup
	$(VENV)/bin/qatmig migrate --guest-size 256M --multifd-channels 2 --multifd-compression zstd

test: setup system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 -p qatmig tests

lint: setup
	$(VENV)/bin/ruff check .

# Benchmarks print their results; `make bench UPDATE_DOCS=1` (also bench-qemu, soak) passes
# --update-docs to each, which writes its figures into docs/ as blocks stamped with the commit
# measured (qatmig_engine.docstamp; tests/test_docs_figures.py checks them).
UPDATE_DOCS_FLAG := $(if $(UPDATE_DOCS),--update-docs,)

# `make bench`: the small `qatmig bench` matrix (engine and, when installed, QEMU; 256 MiB
# Silesia guest, 2 channels, none/zlib/zstd) into bench-results/, then the micro-benchmarks.
bench: setup
	$(VENV)/bin/qatmig bench --guest-size 256M --channels 2 --multifd-compression none,zlib,zstd -o bench-results
	$(PY) benchmarks/bench_codecs.py $(UPDATE_DOCS_FLAG)
	$(PY) benchmarks/bench_engine.py $(UPDATE_DOCS_FLAG)
	$(PY) benchmarks/bench_standin.py --limit 8M $(UPDATE_DOCS_FLAG)

bench-qemu: setup system-deps
	$(PY) benchmarks/bench_side_by_side.py
	$(PY) benchmarks/bench_side_by_side.py --tap-cost 256M $(UPDATE_DOCS_FLAG)

soak: setup
	$(PY) benchmarks/soak_fuzz.py --seconds 600 $(UPDATE_DOCS_FLAG)
	$(PY) benchmarks/net_fuzz.py --cases 10000 --jobs 2 $(UPDATE_DOCS_FLAG)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
