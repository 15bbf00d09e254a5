# scratchllm — the targets a new user can guess.
#   make demo    train a small GPT on the embedded corpus and print samples (installs first)
#   make test    run the test suite (installs first; hypothesis with a fixed seed)
#   make fuzz    the property tests with 20x the examples and fresh random seeds (long)
#   make lint    ruff
#   make bench / bench-quick   peer benchmarks (ratios measured in one run)
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
# A CPU wheel is served locally for this exact pin; an unpinned torch would pull CUDA builds.
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: install demo test fuzz lint bench bench-quick clean

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

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
