# Two entry points on a fresh machine: `make demo` (train -> export -> index -> query on the
# embedded sample, offline) and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow test-browser clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: $(VENV)/.installed
	$(PY) -m demo --out demo_out

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

# Installs Debian's chromium + chromium-driver (apt, needs root) and Selenium, then runs the
# end-to-end page test of `edge_demo serve` in headless Chromium.
test-browser: $(VENV)/.installed
	bash tests/browser_setup.sh $(VENV)
	$(PY) -m pytest -q -m browser

clean:
	rm -rf demo_out build *.egg-info
