# Two commands on a fresh machine: `make demo` and `make test`.  Both create .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-slow lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,plot]"
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/train_classifier.py --out train_classifier.png

test: $(VENV)/.installed
	$(PY) -m pytest -n auto -m "not slow"

# the long runs (fuzzing, exhaustive transform matrix); CI runs them after `make test`
test-slow: $(VENV)/.installed
	$(PY) -m pytest -n auto -m slow || [ $$? -eq 5 ]  # 5: none marked slow

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check jaxops tests examples

clean:
	rm -rf $(VENV) softsign.png train_classifier.png
