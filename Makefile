# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo-out

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install her2score with its dev tools

demo: $(STAMP) ## the main job on the embedded default: synthetic cohort -> train -> evaluate -> report
	$(BIN)/her2score demo --out $(DEMO_OUT)

test: $(STAMP) ## lint and run the test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## the inner loop: lint and every test not marked slow (about a minute)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## the benchmark scripts (minutes; figures go to the README)
	for s in benchmarks/bench_*.py; do $(BIN)/python $$s || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
