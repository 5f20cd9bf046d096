# Two commands a newcomer needs: `make demo` and `make test`. Both set everything up first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEMO_QUERY ?= revenue by quarter bar chart

# The suite on 4 xdist workers on 2 cores: many tests wait on servers, daemons, sensor ticks and a
# schedule's minute, and the extra workers fill those waits (the whole suite on one box: 14 min 49 s
# on 2 workers, 11 min 38 s on 3; on a clean clone, back to back: 11 min 21 s on 3, 10 min 41 s on 4).
# A module runs whole on one worker, the Milvus server's tests share one (colqwen_pipeline_tests/conftest.py),
# heaviest groups first.
PYTEST_WORKERS ?= 4
XDIST := -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder
TEST_ARGS := -q $(XDIST) --durations=30

.PHONY: setup demo test test-args test-fast lint typecheck mutation-check ui clean

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
	$(BIN)/pytest $(TEST_ARGS)

test-args:  # for .ci/run, which needs pytest's own exit code (make turns every failure into 2)
	@echo $(TEST_ARGS)

test-fast: setup
	$(BIN)/pytest -q $(XDIST) -m "not slow"

# ruff, then mypy with the pydantic plugin ([tool.mypy] in pyproject.toml); .ci/run runs this.
lint: setup
	$(BIN)/ruff check colqwen_pipeline colqwen_pipeline_tests scripts
	$(BIN)/ruff format --check colqwen_pipeline colqwen_pipeline_tests scripts
	$(BIN)/mypy colqwen_pipeline

typecheck: setup
	$(BIN)/mypy colqwen_pipeline

# Break the code each strengthened test guards, in a temporary copy, and check the test fails.
mutation-check: setup
	$(BIN)/python scripts/mutation_check.py

ui: setup
	DAGSTER_HOME=$${DAGSTER_HOME:-$$(pwd)/var/dagster} ; mkdir -p $$DAGSTER_HOME ; \
	  [ -f $$DAGSTER_HOME/dagster.yaml ] || cp dagster.yaml $$DAGSTER_HOME/ ; \
	  DAGSTER_HOME=$$DAGSTER_HOME $(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf var
