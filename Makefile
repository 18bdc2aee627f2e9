# upsync: `make run` starts the quick start, `make test` installs what the tests need and runs them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py | cksum | cut -d' ' -f1)
SOURCES := $(shell find src -name '*.py')

.PHONY: venv run etcd test lint unit system-deps bench-deps bench nginx-tests clean

# a regular (not editable) install: the hot path is compiled by mypyc (setup.py), so the package
# in .venv is rebuilt whenever a source file changes
$(STAMP): pyproject.toml setup.py $(SOURCES)
	$(PYTHON) -m venv $(VENV)
	@echo "installing upsync into $(VENV); mypyc compiles the hot path, profile-guided (about two minutes)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/upsync -c examples/quickstart.conf

# a local etcd for trying the seed walk-through: v2 API on, client port 2379, data in /tmp
etcd: $(STAMP)
	$(BIN)/etcd --data-dir /tmp/upsync-etcd --enable-v2=true \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379

system-deps:
	PYTHON=$(PYTHON) sh scripts/install-system-deps.sh

# HAProxy and Caddy, measured beside upsync and nginx by make bench only
bench-deps:
	sh scripts/install-bench-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts setup.py
	$(BIN)/mypy

# the whole suite runs the installed (compiled) build; the interpreted build that
# UPSYNC_PURE_PYTHON=1 installs is the same source, run here from src/ on the proxy's own tests
test: system-deps $(STAMP) lint
	$(BIN)/pytest
	PYTHONPATH=$(CURDIR)/src $(BIN)/pytest -q tests/unit tests/integration/test_proxy.py \
		tests/integration/test_bad_input.py tests/integration/test_memory.py \
		tests/integration/test_hostile_backends.py tests/integration/test_hostile_clients.py \
		tests/integration/test_invariants.py tests/integration/test_workers.py \
		tests/integration/test_request_buffering.py tests/integration/test_addresses.py \
		tests/integration/test_rate_limits.py tests/integration/test_header_memory.py \
		tests/integration/test_known_head.py tests/integration/test_known_request.py

bench: system-deps bench-deps $(STAMP)
	$(BIN)/python bench/proxy_bench.py
	$(BIN)/python bench/propagation.py
	$(BIN)/python bench/workers_bench.py
	$(BIN)/python bench/apply_cost.py
	$(BIN)/python bench/instructions.py

# nginx's regression suite against upsync and Debian's nginx (not part of `make test`); the
# suite is fetched into .nginx-tests, or NGINX_TESTS points to a checkout (see the README)
nginx-tests: system-deps $(STAMP)
	$(BIN)/python tests/nginx_tests/run.py

clean:
	rm -rf $(VENV) build src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
