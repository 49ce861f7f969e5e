# fxrec routine tasks. `make demo` and `make test` each set up .venv first when it is missing.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.fxrec-setup
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test test-fast bench bench-quick lint fmt clean

$(STAMP): pyproject.toml Makefile
	@command -v $(PY) >/dev/null || { echo "fxrec needs Python 3.11 ($(PY) not found)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The pinned stack: these three must match or imports fail with undefined symbols.
	$(BIN)/pip install -q torch==2.13.0 fbgemm-gpu-cpu==1.8.0
	$(BIN)/pip install -q --no-deps torchrec==1.8.0
	# dev: the test and lint tools; ray: `fxrec publish --engine ray` (its tests run in `make test`);
	# sketches: the theta-sketch reach baseline (its tests run in `make test`)
	$(BIN)/pip install -q -e ".[dev,ray,sketches]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/fxrec demo --config configs/demo.yaml --run runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[dev,bench]"
	$(BIN)/python bench/run_all.py

bench-quick: $(STAMP)
	$(BIN)/pip install -q -e ".[dev,bench]"
	$(BIN)/python bench/run_all.py --quick

lint: $(STAMP)
	$(BIN)/ruff check fxrec tests bench
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format fxrec tests bench
	$(BIN)/ruff check --fix fxrec tests bench

clean:
	rm -rf runs .cache bench/results
