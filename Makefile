# The two commands a user needs (as root, on Debian 12):
#   make demo   set everything up and run the main demo on topologies/two-tenants.yaml
#   make test   set everything up and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
TOPOLOGY ?= topologies/two-tenants.yaml
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup test unit lab demo bench bench-lab clean

setup:
	@VENV=$(VENV) ./scripts/setup.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lab: setup
	$(PY) -m pytest tests/lab $(PYTEST_ARGS)

# make demo DEMO_ARGS=--keep leaves the lab up afterwards and prints how to explore it.
demo: setup
	@VENV=$(VENV) ./scripts/demo.sh $(TOPOLOGY) $(DEMO_ARGS)

bench: setup
	$(PY) benchmarks/nb_scale.py

bench-lab: setup
	$(PY) benchmarks/lab_up.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info controller/*.egg-info
