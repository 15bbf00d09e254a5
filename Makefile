# scratchllm — the targets a new user can guess.
#   make demo    train a small GPT on the embedded corpus and print samples (installs first)
#   make test    run the test suite (installs first; hypothesis with a fixed seed)
#   make fuzz    the property tests with 20x the examples and fresh random seeds (long)
#   make lint    ruff
#   make bench / bench-quick   peer benchmarks (ratios measured in one run)
#   make bench-llamacpp        the generation benchmark with llama.cpp as a peer (builds it first)
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
# A CPU wheel is served locally for this exact pin; an unpinned torch would pull CUDA builds.
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: install demo test fuzz lint bench bench-quick bench-llamacpp clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/scratchllm demo --out runs/demo --force

# pytest exits 5 when it collects nothing: that is a failure here, never a silent pass.
test: install
	SCRATCHLLM_HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The long random search: every hypothesis test (the `hypothesis` marker), profile "fuzz" from
# tests/hypothesis_profiles.py (20x the examples, not derandomized, failures replayed from .hypothesis/).
fuzz: install
	SCRATCHLLM_HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -m hypothesis; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no property tests" >&2; exit 1; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check scratchllm tests benchmarks
	$(VENV)/bin/ruff format --check scratchllm tests benchmarks

bench: install
	$(PY) -m benchmarks.run --full

bench-quick: install
	$(PY) -m benchmarks.run --quick

# llama.cpp (llama-cpp-python built from its PyPI source) in its own venv: an optional peer for the
# generation benchmark. GGML_NATIVE=OFF plus the x86 extensions /proc/cpuinfo lists (AMX never):
# see benchmarks/llamacpp.py. The unpacked source stays in the venv: its converter makes the GGUFs.
LLAMACPP_VENV    ?= benchmarks/.venv-llamacpp
LLAMACPP_VERSION ?= 0.3.36
LLAMACPP_STAMP   := $(LLAMACPP_VENV)/.installed-$(LLAMACPP_VERSION)

$(LLAMACPP_STAMP): | install
	test -x $(LLAMACPP_VENV)/bin/python || $(PYTHON) -m venv $(LLAMACPP_VENV)
	$(LLAMACPP_VENV)/bin/python -m pip install --quiet --upgrade pip
	rm -rf $(LLAMACPP_VENV)/src && mkdir -p $(LLAMACPP_VENV)/src
	$(LLAMACPP_VENV)/bin/python -m pip download --quiet --no-deps --no-binary :all: \
	    -d $(LLAMACPP_VENV)/src "llama-cpp-python==$(LLAMACPP_VERSION)"
	tar -xzf $(LLAMACPP_VENV)/src/llama_cpp_python-$(LLAMACPP_VERSION).tar.gz -C $(LLAMACPP_VENV)/src
	CMAKE_ARGS="$$($(PY) -m benchmarks.llamacpp cmake-args)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(LLAMACPP_VENV)/bin/python -m pip install --no-cache-dir $(LLAMACPP_VENV)/src/llama_cpp_python-$(LLAMACPP_VERSION)
	touch $@

bench-llamacpp: install $(LLAMACPP_STAMP)
	SCRATCHLLM_LLAMACPP_VENV=$(abspath $(LLAMACPP_VENV)) $(PY) -m benchmarks.run --full --only generate

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
