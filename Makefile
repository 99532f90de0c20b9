# The two commands the README opens with: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Offline overrides: an archive path or mirror URL for CIFAR-10, a Keras .h5 weights file.
CIFAR_SOURCE ?=
CIFAR_MD5 ?=
WEIGHTS ?= imagenet
DEMO_FIT_FLAGS ?= --backbone mobilenet_v2 --alpha 0.35 --image-size 96
PYTEST_FLAGS ?=
# Two pytest processes (pytest-xdist), each test file in one of them (its module fixtures
# made once): most tests wait on process starts and Python, not on both cores.
PYTEST_WORKERS ?= 2

.PHONY: setup demo test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/retrain prepare-cifar $(if $(CIFAR_SOURCE),--source $(CIFAR_SOURCE)) $(if $(CIFAR_MD5),--md5 $(CIFAR_MD5))
	$(BIN)/retrain fit --data data/cifar10 $(DEMO_FIT_FLAGS) --weights $(WEIGHTS)

test: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_FLAGS)
