# The two commands the README opens with:
#   make demo   install into .venv, then run the main job end to end on the embedded default
#   make test   install into .venv, then run the test suite
# Installation is pinned by requirements.lock and redone only when it or pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
# Ray token authentication stays on for every cluster the demo and the tests start (README: Security).
export RAY_AUTH_MODE := token

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	# torch first (the CPU wheel on these machines); deepspeed is an sdist whose build imports torch, so it is
	# built without isolation against the torch just installed instead of pulling a CUDA build.
	$(VENV)/bin/pip install --quiet -c requirements.lock torch setuptools wheel
	DS_BUILD_OPS=0 $(VENV)/bin/pip install --quiet --no-build-isolation -c requirements.lock -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) jobs/demo.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) demo
