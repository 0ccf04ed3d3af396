# Two entry points: `make run` opens the workbench, `make test` runs the whole suite headless.
# Each creates .venv when it is missing. torch is installed first from its pinned version so that
# pip takes the local CPU wheel and never pulls CUDA packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test env lint benchmarks clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,monitoring]"
	touch $(STAMP)

env: $(STAMP)

# Qt's X11 plugin needs system libraries pip cannot install: as root they are installed with apt-get,
# otherwise the check prints the apt-get command and make stops.
run: $(STAMP)
	$(PY) -m workbench.system_libs --install
	$(PY) app.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The GUI tests run in a process of their own: after the ~450 headless tests in one process, the first
# QMainWindow aborted inside Qt (see the session notes); a fresh process per suite keeps them independent.
# pytest-xdist runs each suite on one worker per core (at most 4), the cores shared out between them
# (tests/conftest.py): on two cores 9 + 6 minutes in one process became 3.5 + 3.
XDIST := -n auto --maxprocesses 4
test: $(STAMP)
	$(VENV)/bin/ruff check .
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q $(XDIST) --ignore=tests/workbench
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q $(XDIST) tests/workbench

benchmarks: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
