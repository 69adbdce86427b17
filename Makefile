# One entry point per job. Each target creates (or reuses) the virtual environment in .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; pinned so that a fresh machine does not pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test lint docs bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

demo: venv            ## the main job: the equivalence + training study
	$(BIN)/otcl study --quick --out study-out

test: venv            ## lint, docs build and the full test suite
	$(BIN)/ruff check otcl tests benchmarks
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff check otcl tests benchmarks
	$(BIN)/ruff format --check otcl tests benchmarks

docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: venv           ## the benchmark suite; writes benchmarks/results/
	$(BIN)/python -m benchmarks --out benchmarks/results --processes 3 --readme README.md

clean:
	rm -rf $(VENV) site study-out .pytest_cache
