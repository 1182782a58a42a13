# Two commands for a fresh clone: `make demo` runs the main job, `make test` runs every test.
# Each creates .venv and installs what it needs (Python >= 3.11 required).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean

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

# pytest exits 5 when it collected no tests: that is a failure here, never a silent pass.
test: $(VENV)/.installed-test
	@$(PY) -m pytest $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache
