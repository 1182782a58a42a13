# Two commands for a fresh clone: `make demo` runs the main job, `make test` lints, type-checks, then runs every test.
# Each creates .venv and installs what it needs (Python >= 3.11 required).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo lint test chromium clean bench-calibration bench-throughput

$(VENV)/.python-ok:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required; run: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@touch $@

$(VENV)/.installed-local: pyproject.toml $(VENV)/.python-ok
	$(PY) -m pip install --quiet -e '.[local]'
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.python-ok
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed-local

demo: $(VENV)/.installed-local
	$(PY) -m streams demo $(ARGS)

# Lint and type-check (configured in pyproject.toml: [tool.ruff], [tool.mypy], which also lists mypy's paths).
# The tools come from the [test] extra. Both always run, so one pass shows every problem; either failing fails
# the target. `make test` runs this first: a lint or type error fails the tests.
lint: $(VENV)/.installed-test
	@rc=0; \
	echo "$(PY) -m ruff check ."; $(PY) -m ruff check . || rc=1; \
	echo "$(PY) -m mypy"; $(PY) -m mypy || rc=1; \
	exit $$rc

# The browser test (tests/integration/test_dashboard_browser.py) drives Debian's chromium, and fails, never
# skips, without it. Installed here when missing and it can be: as root, or through passwordless `sudo -n`.
# When it cannot, make test still runs every test, and the browser test fails saying what is missing.
# $CHROMIUM (an executable) stands in for /usr/bin/chromium, as in streams/ops/screenshot.py.
chromium:
	@if { [ -n "$$CHROMIUM" ] && [ -x "$$CHROMIUM" ]; } || [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; \
	then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; else sudo="sudo -n"; fi; \
	echo "chromium is missing: installing Debian's chromium for the browser test (apt-get)"; \
	{ $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	|| echo "warning: could not install chromium (apt-get install -y chromium, as root); the browser test will fail" >&2

# pytest exits 5 when it collected no tests: that is a failure here, never a silent pass.
test: $(VENV)/.installed-test lint chromium
	@$(PY) -m pytest $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Calibration benchmarks (bench/README.md). Their own venv: netcal needs torch, which the service never
# does. torch is installed FIRST and pinned to the 2.13.0 CPU wheel; any other version would make pip
# fetch gigabytes of CUDA wheels. The three scripts read the model's scores committed in bench/scores/; [local]
# is there to score afresh with the local model when a prompt edit changed their key (bench/dataset_scores.py).
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
TORCH ?= torch==2.13.0

$(BENCH_VENV)/.installed-bench: pyproject.toml
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet '$(TORCH)'
	$(BENCH_PY) -m pip install --quiet -e '.[local,bench]'
	@touch $@

bench-calibration: $(BENCH_VENV)/.installed-bench
	$(BENCH_PY) bench/calibration_datasets.py
	$(BENCH_PY) bench/calibration_eval.py $(ARGS)
	$(BENCH_PY) bench/netcal_compare.py $(ARGS)

# Throughput and scale (bench/README.md, "Throughput"): raw aiokafka pass-through as the ceiling, the full
# worker at zero model latency, 200 ms latency at in-flight 32/128/512, the statistics path, RSS over 1M
# messages, two workers against one. Prints figures; about 30-60 minutes on 2 shared cores.
bench-throughput: $(VENV)/.installed-local
	$(PY) bench/throughput.py $(ARGS)
