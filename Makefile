# Set-up and common tasks. Every target creates the virtual environment on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
ARCH := $(shell uname -m)
# On x86_64 these torch builds lie on this kind of machine's disk (no download).
ifeq ($(ARCH),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif
PYTEST_ARGS ?=
SYNTHETIC ?= data/synthetic
QUICKSTART_OUT ?= data/output/tiny-slowonly
DEMO_DIR ?= data/demo
SEEDS ?= 1 2 3
SEEDS_OUT ?= data/output/quickstart-seeds

.PHONY: install test quickstart quickstart-seeds demo

$(VENV)/.installed: setup.py
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet $(TORCH_SPEC)
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PYTHON) -m pytest -q $(PYTEST_ARGS) tests

# The main job end to end on the built-in synthetic data: set-up, dataset, training, evaluation.
quickstart: $(VENV)/.installed
	test -f $(SYNTHETIC)/synthetic_dataset.json || $(PYTHON) -m stmixer.data.synthetic --out $(SYNTHETIC) --size 96 128
	$(PYTHON) train_net.py --config-file config_files/synthetic/tiny-slowonly.yaml \
		DATA.PATH_TO_DATA_DIR $(SYNTHETIC) OUTPUT_DIR $(QUICKSTART_OUT)

# The quickstart once per seed of SEEDS (one after another); prints each frame-mAP and mean ± std.
quickstart-seeds: $(VENV)/.installed
	$(PYTHON) benchmarks/quickstart_seeds.py --seeds $(SEEDS) --data $(SYNTHETIC) --out $(SEEDS_OUT)

# demo.py on a synthetic 640x360 video with the quickstart model (trained first if absent).
demo: $(VENV)/.installed
	test -f $(QUICKSTART_OUT)/model_final.pth || $(MAKE) quickstart
	test -f $(DEMO_DIR)/synthetic.mp4 || $(PYTHON) -m stmixer.data.synthetic --video $(DEMO_DIR)/synthetic.mp4 \
		--size 360 640 --fps 25 --seconds 8 --render-short-side 96
	$(PYTHON) demo.py --config-file config_files/synthetic/tiny-slowonly.yaml --input $(DEMO_DIR)/synthetic.mp4 \
		--output $(DEMO_DIR)/labelled.mp4 --json $(DEMO_DIR)/labelled.jsonl \
		DATA.PATH_TO_DATA_DIR $(SYNTHETIC) MODEL.WEIGHT $(QUICKSTART_OUT)/model_final.pth
