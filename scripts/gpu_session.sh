# Source on the GPU machine (torch/transformers/peft preinstalled, no package registry):
#   source scripts/gpu_session.sh
# installs the wheels carried in .whl/ into /tmp/site and puts them and every cardforge package's src/ on
# PYTHONPATH. Fill .whl/ beforehand on a machine with a registry, with the versions of the project's venv
# (`.venv/bin/pip list`), e.g. `pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
# --platform manylinux_2_28_x86_64 ... -d .whl transformers==X peft==X omegaconf==X hydra-core==X regex==X
# bitsandbytes==X` plus `pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3` (sdist only). Keep the tree
# that travels under 64 MiB: bitsandbytes' wheel (43 MB) shrinks to 7 MB without the libraries of other CUDA/ROCm
# versions (docs/training.md, issue #20 runs).
R=$(pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$R"/.whl/*.whl
_cf_pp=/tmp/site
for _cf_src in "$R"/packages/*/src; do _cf_pp=$_cf_pp:$_cf_src; done
export PYTHONPATH=$_cf_pp${PYTHONPATH:+:$PYTHONPATH}
unset _cf_pp _cf_src
