# make setup: install what is missing (Debian packages, .venv with the project). Safe to run twice.
# make demo:  set up, then `reconciler demo`: the local fleet, the agent on a copy of the example
#             repository, three pushes (a migration, a backup, a rollback and its revert); the agent
#             keeps running (`reconciler demo --stop` stops it).
# make test:  set up and run the whole test suite (fleet tests included).
# make bench: set up and run the benchmarks.
# make wheel: set up and build the installable wheel into dist/ (hooks, templates, unit, example included).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup system demo test bench wheel clean

setup: system $(STAMP)

# Debian packages first: the virtualenv needs python3-venv on a fresh machine.
system:
	@bash scripts/setup-system.sh

$(STAMP): pyproject.toml | system
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/reconciler demo

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

# Offline: the virtualenv's setuptools (the test extra pins a modern one).
wheel: setup
	$(PY) -m pip wheel -q --no-deps --no-build-isolation --no-index -w dist .

clean:
	-$(VENV)/bin/reconciler sandbox down
	rm -rf $(VENV)
