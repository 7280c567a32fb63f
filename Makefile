# One entry point for people and CI. `make demo` and `make test` create their own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test check lint venv clean system-packages

$(BIN)/sssrd: pyproject.toml
	bash tests/ensure-system-packages python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/sssrd

demo: venv
	$(BIN)/sssrd dev

lint: venv
	$(BIN)/ruff check sssrd tests bench cdk tools
	$(BIN)/ruff format --check sssrd tests bench cdk tools
	$(BIN)/mypy

# Debian packages the tests need (tests/system-packages.txt): installed as root, else named.
system-packages:
	bash tests/ensure-system-packages tests/system-packages.txt

# The edit-test loop: lint and the tests that start no subprocess (no daemon, system tool,
# browser or container; markers in pyproject.toml). Needs only the virtualenv.
check: lint
	$(BIN)/pytest -q -m "not (daemon or system_tools or browser or container)"

test: system-packages lint npm-packages
	SSSRD_PYTHON=$(BIN)/python node --test node/test/*.test.mjs
	$(BIN)/pytest

# npm packages for the tests: the Node helper's dev tools (TypeScript, for its types) and the
# React example (tests/test_browser.py builds it), from npm's own cache (~/.npm) when it has
# them; node_modules is never committed.
NPM_CI := npm ci --prefer-offline --no-audit --no-fund --loglevel=error
.PHONY: npm-packages
npm-packages: node/node_modules/.package-lock.json examples/react-ssr/node_modules/.package-lock.json
%/node_modules/.package-lock.json: %/package-lock.json %/package.json
	cd $* && $(NPM_CI)

# packaging/sssrd.toml and docs/settings.md, generated from the Settings table in sssrd/config.py
# (tests/test_config.py fails while they are stale).
.PHONY: settings-docs
settings-docs: venv
	$(BIN)/python tools/settings_docs.py

clean:
	rm -rf $(VENV) build dist *.egg-info

# The Debian package $(DIST)/sssrd_<version>_<arch>.deb (needs python3-venv and binutils).
DIST ?= dist
.PHONY: deb
deb:
	bash packaging/deb/build.sh $(DIST)

# The fleet in miniature (tests/fleet.py; needs root): sssrd instances in network namespaces behind
# HAProxy as the ALB, steady / scale-out / scale-in / crash under open-loop load. The last line it
# prints is the JSON report's path; it exits 1 if a promise did not hold.
.PHONY: fleet
fleet: venv
	bash tests/ensure-system-packages haproxy iproute2 util-linux
	$(BIN)/python tests/fleet.py $(FLEET_ARGS)

# The benchmark suite against HAProxy and nginx (needs haproxy nginx-light nghttp2-client curl);
# `make bench BENCH_ARGS=--quick` for a one-minute smoke run. Figures: bench/RESULTS.md.
.PHONY: bench
bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)
