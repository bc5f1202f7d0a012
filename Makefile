# Two commands for a fresh machine with Python 3.11: `make demo` (the main job) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-dpo demo-critic demo-prefix demo-unirex demo-msd test test-all lint bench venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lm-suite if job --out runs/if_job

demo-dpo: $(STAMP)
	$(VENV)/bin/lm-suite fit --config configs/dpo.yaml

demo-critic: $(STAMP)
	$(VENV)/bin/lm-suite fit --config configs/critic_rm.yaml
	$(VENV)/bin/lm-suite test --config configs/critic_rm.yaml --data.test_files data/rewardbench_tiny.jsonl \
		--ckpt_path $$(ls -t runs/critic_rm/lightning_logs/*/checkpoints/last.ckpt | head -1)

demo-prefix: $(STAMP)
	$(VENV)/bin/lm-suite prefix report --out runs/prefix_report

demo-unirex: $(STAMP)
	$(VENV)/bin/lm-suite fit --config configs/unirex.yaml
	$(VENV)/bin/lm-suite test --config configs/unirex.yaml \
		--ckpt_path $$(ls -t runs/unirex/lightning_logs/*/checkpoints/last.ckpt | head -1)

demo-msd: $(STAMP)
	$(VENV)/bin/lm-suite fit --config configs/msd.yaml
	$(VENV)/bin/lm-suite test --config configs/msd.yaml \
		--ckpt_path $$(ls -t runs/msd/lightning_logs/*/checkpoints/*.ckpt | head -1)

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" tests

test-all: $(STAMP)
	$(PY) -m pytest tests

# ruff, then the import contract of pyproject.toml's [tool.importlinter] (tests/test_layers.py runs it too)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/dpo_vs_trl.py

clean:
	rm -rf $(VENV) runs lightning_logs .cache
