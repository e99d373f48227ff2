# Source on the GPU machine (torch/transformers/peft preinstalled, no package registry):
#   source scripts/gpu_session.sh
# installs the pure-Python (and bitsandbytes) wheels carried in .whl/ into /tmp/site and puts them and the
# cardforge packages on PYTHONPATH. Fill .whl/ beforehand with `pip download --only-binary=:all: --no-deps
# --python-version 3.12 -d .whl bitsandbytes omegaconf hydra-core mlflow-skinny ...` on a machine with a registry.
R=$(pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$R"/.whl/*.whl
export PYTHONPATH=/tmp/site:$R/packages/core/src:$R/packages/train/src:$R/packages/quant/src:$R/packages/serve/src:$R/packages/eval/src
