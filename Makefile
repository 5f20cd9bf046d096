# Two commands a newcomer needs: `make demo` and `make test`. Both set everything up first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEMO_QUERY ?= revenue by quarter bar chart

.PHONY: setup demo test lint ui clean

setup: $(VENV)/.installed
	@bash scripts/install_system_deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,deploy,bench]'
	touch $@

demo: setup
	$(BIN)/colqwen-pipeline ingest
	$(BIN)/colqwen-pipeline search "$(DEMO_QUERY)" --top-k 3

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check colqwen_pipeline colqwen_pipeline_tests scripts
	$(BIN)/ruff format --check colqwen_pipeline colqwen_pipeline_tests scripts

ui: setup
	DAGSTER_HOME=$${DAGSTER_HOME:-$$(pwd)/var/dagster} ; mkdir -p $$DAGSTER_HOME ; \
	  [ -f $$DAGSTER_HOME/dagster.yaml ] || cp dagster.yaml $$DAGSTER_HOME/ ; \
	  DAGSTER_HOME=$$DAGSTER_HOME $(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf var
