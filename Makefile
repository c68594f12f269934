# Two commands set everything up on a fresh machine: `make quickstart` and `make test`.
# Each installs what it needs into .venv, idempotently (re-run only when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

VLA := $(VENV)/bin/vla
# configs/quickstart.yaml reads and writes here
QUICKSTART_DIR := runs/quickstart
QUICKSTART_TASKS ?= drawer-close-v3,button-press-topdown-v3,window-close-v3,reach-v3

.PHONY: install test quickstart lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install
	$(VENV)/bin/python -m pytest -q

# The main job, small enough for 2 CPU cores: collect expert demonstrations of a few Meta-World tasks,
# train the `small` policy, evaluate it beside the zero-action policy on the same seeds (success table,
# report, videos with the predicted foresight beside the real frames), and write a foresight video.
quickstart: install
	rm -rf $(QUICKSTART_DIR)
	$(VLA) collect --suite metaworld --tasks $(QUICKSTART_TASKS) --episodes-per-task 20 --workers 2 \
		--out $(QUICKSTART_DIR)/demos.zarr
	$(VLA) data info $(QUICKSTART_DIR)/demos.zarr
	$(VLA) train --config configs/quickstart.yaml
	$(VLA) eval --policy $(QUICKSTART_DIR)/policy --suite metaworld --tasks $(QUICKSTART_TASKS) --episodes 10 \
		--workers 2 --max-steps 200 --baseline zero --videos 1 --out $(QUICKSTART_DIR)/eval
	$(VLA) foresight --policy $(QUICKSTART_DIR)/policy --suite metaworld --tasks drawer-close-v3 \
		--out $(QUICKSTART_DIR)/foresight

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
