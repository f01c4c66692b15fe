# gandissect: two commands.
#   make demo   install (venv in .venv, CPU torch), compute the demo spec, start the dashboard
#   make test   install, then run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SPEC ?= gandissect.toml
PORT ?= 8501

.PHONY: install demo compute dashboard test test-fast bench clean

install: $(VENV)/.installed

# torch is pinned to 2.13.0 and installed first: that version resolves to the CPU wheel here; an
# unpinned torch would pull several GB of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dashboard,dev,transformers]'
	touch $@

compute: install
	$(BIN)/gandissect run $(SPEC)

demo: compute
	$(BIN)/gandissect sql "select status, count(*) as runs from runs group by 1"
	$(BIN)/gandissect dashboard --port $(PORT)

# the default suite (slow tests deselected by pyproject's addopts), then the slow ones
test: install
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q -m slow

test-fast: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/gandissect bench

clean:
	rm -rf .cache gandissect.duckdb gandissect.duckdb.wal gandissect.duckdb.gate
