# One entry point per job. Each target creates (or reuses) the virtual environment in .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned and installed from pip's configured indexes. Where those would give the CUDA
# build (PyPI's Linux wheels pull several GB of CUDA packages), set TORCH_INDEX to an index of
# CPU wheels, e.g. `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu`; it applies to
# the torch install only.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

# Scripts the docs site serves itself, so that it works from disk with no network: KaTeX (math)
# and iframe-worker (search from file://), from the npm packages pinned in tools/docs-assets/.
VENDOR := docs/assets/vendor
NPM_MODULES := tools/docs-assets/node_modules

.PHONY: venv demo test lint docs docs-assets docs-check bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

$(VENDOR)/.copied: tools/docs-assets/package-lock.json
	@command -v npm >/dev/null || { echo "the docs need npm (Node.js) to install KaTeX: apt-get install npm"; exit 1; }
	npm ci --prefix tools/docs-assets --no-audit --no-fund --ignore-scripts --loglevel=error
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)/katex $(VENDOR)/iframe-worker
	cp -r $(NPM_MODULES)/katex/dist/katex.min.js $(NPM_MODULES)/katex/dist/katex.min.css \
		$(NPM_MODULES)/katex/dist/fonts $(NPM_MODULES)/katex/LICENSE $(VENDOR)/katex/
	cp $(NPM_MODULES)/iframe-worker/shim/index.js $(VENDOR)/iframe-worker/shim.js
	cp $(NPM_MODULES)/iframe-worker/LICENSE $(VENDOR)/iframe-worker/
	touch $@

docs-assets: $(VENDOR)/.copied

demo: venv            ## the main job: the equivalence + training study
	$(BIN)/otcl study --quick --out study-out

test: venv docs-assets   ## lint, docs build and the full test suite
	$(BIN)/ruff check otcl tests benchmarks
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff check otcl tests benchmarks
	$(BIN)/ruff format --check otcl tests benchmarks

docs: venv docs-assets
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-check: venv docs-assets   ## build the site, open pages in headless Chromium (file://, no network)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/docs-check/site
	$(BIN)/python tools/docs_check.py $(VENV)/docs-check/site --out $(VENV)/docs-check

bench: venv           ## the benchmark suite; writes benchmarks/results/
	$(BIN)/python -m benchmarks --out benchmarks/results --processes 3 --readme README.md

clean:
	rm -rf $(VENV) site study-out .pytest_cache $(VENDOR) $(NPM_MODULES)
