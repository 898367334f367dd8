# ddflow: two commands on a fresh machine — `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
FMNIST_DEB := /usr/share/datasets/fashion-mnist
FMNIST_CACHE := $(HOME)/.cache/ddflow

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 300
export HF_HUB_OFFLINE ?= 1

.PHONY: venv data demo test test-all lint bench clean gpu-wheels gpu-data gpu-check-dry

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev,ray]" 2>&1 | grep -v "is ignored: it is neither" || true
	@$(BIN)/python -c "import ddcore, flows, tasks, torch, prefect, mlflow, webdataset, geoopt, diffusers" \
		|| (echo "error: the install is incomplete; see the pip output above" >&2; exit 1)
	@rm -f $(VENV)/.installed-* && touch $@

# Fashion-MNIST: the Debian package when apt is usable, else torchvision's download into ~/.cache/ddflow.
data:
	@if [ -f $(FMNIST_DEB)/train-images-idx3-ubyte.gz ] || [ -f $(FMNIST_CACHE)/FashionMNIST/raw/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null && echo "installed dataset-fashion-mnist"; \
	else \
		$(MAKE) venv && $(BIN)/python -c "import torchvision; torchvision.datasets.FashionMNIST('$(FMNIST_CACHE)', download=True)"; \
	fi

demo: venv data
	$(BIN)/ddflow run configs/demo.yaml

test: venv data
	$(BIN)/python -m pytest -q

test-all: venv data
	$(BIN)/python -m pytest -q -m "not gpu or gpu"

lint: venv
	$(BIN)/ruff check .

bench: venv data
	$(BIN)/python benchmarks/ingest_speed.py

clean:
	rm -rf artifacts .pytest_cache

# The GPU machine (benchmarks/gpu_check.sh): its image has torch but not these; the venv's versions as Python 3.12
# x86-64 wheels in .whl/ (pass --wheels .whl), and the four Fashion-MNIST files in .data/fashion-mnist (both ignored).
GPU_PACKAGES := pydantic pydantic-core annotated-types typing-inspection typing-extensions diffusers \
	importlib-metadata geoopt webdataset braceexpand
gpu-wheels: venv
	rm -rf .whl && $(BIN)/pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $$($(BIN)/python -c "import importlib.metadata as m; \
		print(' '.join(f'{n}=={m.version(n)}' for n in '$(GPU_PACKAGES)'.split()))") 2>&1 | grep -v "is ignored" || true
	@ls .whl

gpu-data: data
	mkdir -p .data/fashion-mnist && cp $$(ls $(FMNIST_DEB)/*-ubyte.gz 2>/dev/null || ls $(FMNIST_CACHE)/FashionMNIST/raw/*-ubyte.gz) .data/fashion-mnist/

gpu-check-dry: venv data
	benchmarks/gpu_check.sh --dry-run
