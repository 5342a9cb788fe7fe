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

GPU_STAMP := $(VENV)/.installed-gpu
MAMBA ?= 1

.PHONY: install install-gpu demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	# torch first (the CPU wheel on these machines); deepspeed is an sdist whose build imports torch, so it is
	# built without isolation against the torch just installed instead of pulling a CUDA build.
	$(VENV)/bin/pip install --quiet -c requirements.lock torch setuptools wheel
	DS_BUILD_OPS=0 $(VENV)/bin/pip install --quiet --no-build-isolation -c requirements.lock -e ".[test]"
	touch $(STAMP)

# The same stack with PyPI's CUDA build of torch (requirements-gpu.lock) and mamba-ssm's kernels, for GPU
# machines. --isolated keeps a machine's pip configuration (such as a local folder of CPU wheels) out of the
# resolution. mamba-ssm installs a prebuilt wheel when one matches this torch/CUDA pair, else compiles its
# kernels with nvcc for 9 GPU architectures (tens of minutes); MAMBA=0 skips it (SynthSleepNet then runs
# its PyTorch scan).
install-gpu: $(GPU_STAMP)

$(GPU_STAMP): pyproject.toml requirements.lock requirements-gpu.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip --isolated install --quiet -c requirements.lock -c requirements-gpu.lock torch setuptools wheel
	DS_BUILD_OPS=0 $(VENV)/bin/pip --isolated install --quiet --no-build-isolation -c requirements.lock \
		-c requirements-gpu.lock -e ".[test]"
	if [ "$(MAMBA)" = 1 ]; then $(VENV)/bin/pip --isolated install --quiet --no-build-isolation \
		-c requirements-gpu.lock mamba-ssm; fi
	touch $(GPU_STAMP) $(STAMP)

demo: $(STAMP)
	$(PY) jobs/demo.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) demo
