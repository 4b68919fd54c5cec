# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo-out

.PHONY: install viewer demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install her2score with its dev tools

# The slide viewer's OpenSeadragon comes from the npm registry (web/package-lock.json pins it) and is
# copied into a git-ignored folder that `her2score serve` serves; no CDN is ever used.
VENDOR := src/her2score/serve/static/vendor/openseadragon
OSD    := web/node_modules/openseadragon

$(VENDOR)/openseadragon.min.js: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --ignore-scripts
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)
	cp $(OSD)/build/openseadragon/openseadragon.min.js $(OSD)/LICENSE.txt $(VENDOR)/
	cp -r $(OSD)/build/openseadragon/images $(VENDOR)/images

viewer: $(VENDOR)/openseadragon.min.js ## vendor OpenSeadragon for the viewer of `her2score serve` (npm ci)

demo: $(STAMP) ## the main job on the embedded default: synthetic cohort -> train -> evaluate -> report
	$(BIN)/her2score demo --out $(DEMO_OUT)

test: $(STAMP) viewer ## lint and run the test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) viewer ## the inner loop: lint and every test not marked slow (about a minute)
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
	rm -rf $(VENV) $(DEMO_OUT) web/node_modules src/her2score/serve/static/vendor .pytest_cache .ruff_cache
