# The two commands a user needs (as root, on Debian 12):
#   make demo   set everything up and run the main demo on topologies/two-tenants.yaml
#   make test   set everything up and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
TOPOLOGY ?= topologies/two-tenants.yaml
PYTEST_ARGS ?=
DEMO_ARGS ?=
# The lab runs a controller per node (its default); `make test` runs these lab tests a
# second time with one central controller, so both modes stay tested (empty: skip that).
# VNET64_LAB_CONTROL=central make test runs the whole suite with the central one.
CENTRAL_TESTS ?= tests/lab/test_acceptance.py tests/lab/test_survival.py
# ... and these once more with every host's translator on the BPF engine
# (--translator-engine bpf: the tc-BPF fast path in front of TAYGA), so both engines stay
# tested: the translated path's suites, acceptance and security (empty: skip that).
BPF_TESTS ?= tests/lab/test_acceptance.py tests/lab/test_security.py \
	tests/lab/test_translator_engine.py tests/lab/test_icmp6_errors.py \
	tests/lab/test_fragments.py tests/lab/test_tcp_icmp_errors.py tests/lab/test_echo_ids.py \
	tests/lab/test_datapath_edges.py

.PHONY: setup test unit lab demo bench bench-lab lock clean

setup:
	@VENV=$(VENV) ./scripts/setup.sh

test: setup
	@status=0; \
	echo "$(PY) -m pytest $(PYTEST_ARGS)"; \
	$(PY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	if [ -n "$(strip $(CENTRAL_TESTS))" ]; then \
	    echo "$(PY) -m pytest -ra --lab-control central $(CENTRAL_TESTS)"; \
	    $(PY) -m pytest -ra --lab-control central $(CENTRAL_TESTS) || status=$$?; \
	fi; \
	if [ -n "$(strip $(BPF_TESTS))" ]; then \
	    echo "$(PY) -m pytest -ra --translator-engine bpf $(BPF_TESTS)"; \
	    $(PY) -m pytest -ra --translator-engine bpf $(BPF_TESTS) || status=$$?; \
	fi; \
	exit $$status

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

# Re-resolve requirements/lock.txt (pyproject.toml's ranges + requirements/lock.in's pins)
# to today's newest releases, with hashes, using pip-tools in a throw-away venv; then run
# `make test` before committing the new lock.
PIP_TOOLS ?= pip-tools==7.7.0
lock:
	@rm -rf build/lock-venv && python3 -m venv build/lock-venv
	@build/lock-venv/bin/pip install -q "$(PIP_TOOLS)"
	CUSTOM_COMPILE_COMMAND="make lock" build/lock-venv/bin/pip-compile -q --generate-hashes \
	    --allow-unsafe --strip-extras --extra test --no-emit-index-url --no-emit-find-links --upgrade \
	    -o requirements/lock.txt pyproject.toml requirements/lock.in
	@rm -rf build/lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info controller/*.egg-info
