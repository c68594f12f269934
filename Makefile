# Two commands set everything up on a fresh machine: `make quickstart` and `make test`.
# Each installs what it needs into .venv, idempotently (re-run only when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

QUICKSTART_DIR ?= runs/quickstart

.PHONY: install test quickstart lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install
	$(VENV)/bin/python -m pytest -q

quickstart: install
	rm -rf $(QUICKSTART_DIR)/demos.zarr
	$(VENV)/bin/vla collect --suite metaworld --tasks reach-v3,button-press-topdown-v3,drawer-close-v3 \
		--episodes-per-task 4 --image-size 64 --workers 2 --out $(QUICKSTART_DIR)/demos.zarr
	$(VENV)/bin/vla data info $(QUICKSTART_DIR)/demos.zarr
	$(VENV)/bin/vla data check $(QUICKSTART_DIR)/demos.zarr

lint: install
	$(VENV)/bin/ruff check vla tests bench
	$(VENV)/bin/ruff format --check vla tests bench

format: install
	$(VENV)/bin/ruff format vla tests bench
	$(VENV)/bin/ruff check --fix vla tests bench

bench: install
	$(VENV)/bin/python bench/data_loading.py

clean:
	rm -rf $(VENV) runs .pytest_cache
