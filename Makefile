# wb-magic: `make demo` serves the example web app (examples/app), `make tour` runs the tour,
# `make test` sets up .venv from scratch and runs every check, on every Python the project declares.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# requires-python = ">=3.10": besides $(PYTHON) (3.11 here), the suite runs on the oldest and the newest CPython,
# found as pyenv names them (PYENV_VERSION=3.10.13 python3.10); each gets a venv of its own, .venv-<version>.
# `make test OTHER_PYTHONS=` runs the default Python only.
OTHER_PYTHONS ?= 3.10.13 3.13.0

.PHONY: demo demo-otel tour test test-default lint bench clean $(addprefix test-,$(OTHER_PYTHONS)) browser-test screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

DEMO_STAMP := $(VENV)/.installed-demo

$(DEMO_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

# the example web app on http://localhost:8000 (127.0.0.1 only; WB_APP_PORT=... picks another port)
demo: $(DEMO_STAMP)
	$(BIN)/python -m examples.app

# the same, each request traced through the workers with OpenTelemetry: spans to the console, or by OTLP to
# OTEL_EXPORTER_OTLP_ENDPOINT when it is set (e.g. OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 make demo-otel)
demo-otel: $(DEMO_STAMP)
	$(BIN)/python -m examples.app --otel

tour: $(STAMP)
	$(BIN)/python -m examples.tour

lint: $(STAMP)
	$(BIN)/ruff check wb_magic worker_kernel tests examples benchmarks browser_tests
	$(BIN)/ruff format --check wb_magic worker_kernel tests examples benchmarks browser_tests
	$(BIN)/mypy

NBVAL := --nbval --nbval-current-env notebooks --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider

test: lint test-default $(addprefix test-,$(OTHER_PYTHONS))

# tests/test_remote.py builds a second host with Debian's openssh-server: installed here when missing (as root)
test-default: $(STAMP)
	sh tests/install_sshd.sh
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest $(NBVAL)

# the suite and the notebooks on another Python, in a venv of its own (a missing interpreter is an error)
.PRECIOUS: .venv-%/.installed
.venv-%/.installed: pyproject.toml
	rm -rf .venv-$*
	PYENV_VERSION=$* python$(basename $*) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet -e '.[test]'
	touch $@

$(addprefix test-,$(OTHER_PYTHONS)): test-%: .venv-%/.installed
	sh tests/install_sshd.sh
	env -u PYTHONDONTWRITEBYTECODE .venv-$*/bin/python -m pytest -p no:cacheprovider
	env -u PYTHONDONTWRITEBYTECODE .venv-$*/bin/python -m pytest $(NBVAL)

BROWSER_STAMP := $(VENV)/.installed-browser

$(BROWSER_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,browser]'
	touch $(BROWSER_STAMP)

# the teaching notebooks in a real JupyterLab, driven by Playwright on Debian's Chromium (installed when missing,
# as root); screenshots go to $(SCREENSHOTS), which is not tracked
SCREENSHOTS ?= build/browser-screenshots

browser-test: $(BROWSER_STAMP)
	sh browser_tests/install_chromium.sh
	env -u PYTHONDONTWRITEBYTECODE WB_SCREENSHOTS=$(SCREENSHOTS) $(BIN)/python -m pytest browser_tests -p no:cacheprovider --timeout 900

# a few of the browser test's screenshots, for docs/notebooks.md
SHOWN := 01_hello-workers-table 05_failures-remote-traceback interrupt completion inspector 06_tracing-waterfall-2

screenshots: browser-test
	mkdir -p docs/screenshots
	for name in $(SHOWN); do cp $(SCREENSHOTS)/$$name.png docs/screenshots/; done

# the benchmark suite beside its peers (the bench extra); writes docs/benchmarks.{md,json,png}, and the example
# web app end to end beside a plain Starlette route: docs/benchmarks-web.md
# (with bytecode caching on, as users have it: a worker compiling its modules at every start is not what we measure)
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m compileall -q wb_magic worker_kernel benchmarks
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m benchmarks.run --out docs
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m benchmarks.web --out docs

clean:
	rm -rf $(VENV) $(addprefix .venv-,$(OTHER_PYTHONS)) .pytest_cache .mypy_cache .ruff_cache build
