#!/usr/bin/env bash
# Create the project's virtual environment (.venv) and install vstreamer with the given extras.
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh local   or   scripts/install.sh local,dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-local}"
venv="${VSTREAMER_VENV:-.venv}"

# The operating system's Python comes first: distributions build it with profile-guided and link-time optimisation.
# A pyenv build without `--enable-optimizations` (pyenv's default) ran the gateway ~20% slower here (CPU per request,
# bench/bench_gateway.py). PYTHON=/path/to/python3 picks one instead.
pick_python() {
  if [ -n "${PYTHON:-}" ]; then
    if "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$PYTHON"; return 0
    fi
    echo "PYTHON=$PYTHON is not a Python >= 3.11" >&2; return 1
  fi
  for candidate in /usr/bin/python3.12 /usr/bin/python3.11 /usr/bin/python3 python3.12 python3.11 python3; do
    # venv and ensurepip too: some distributions ship them apart (Debian: python3-venv).
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "vstreamer needs Python >= 3.11 with its venv module (Debian: apt-get install -y python3-venv)" >&2
  return 1
}

if [ ! -x "$venv/bin/python" ]; then
  python=$(pick_python)
  echo "==> creating virtual environment $venv with $python"
  "$python" -m venv "$venv" || { echo "python venv module missing: apt-get install -y python3-venv" >&2; exit 1; }
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

stamp="$venv/.vstreamer-installed-${extras//,/-}"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/install.sh ]; then
  echo "==> vstreamer[$extras] already installed in $venv"
  exit 0
fi

# llama.cpp is compiled for x86-64-v3 (AVX2, FMA, F16C), not for the build machine's own CPU: a native build uses
# every instruction the CPU lists, and some virtual machines list AMX without letting programs run it (the model
# then dies of an illegal instruction on its first token). The wheel is built once per version and flags, and kept.
llama_version=$(sed -n 's/^ *"llama-cpp-python==\([0-9.]*\)",*$/\1/p' pyproject.toml | head -1)
llama_flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
if [ "$(uname -m)" != x86_64 ]; then llama_flags=""; fi  # elsewhere llama.cpp's own defaults
llama_wheels="${XDG_CACHE_HOME:-$HOME/.cache}/vstreamer/wheels/llama-cpp-python-$llama_version-$(echo "$llama_flags" | cksum | cut -d' ' -f1)"
if [[ ",$extras," == *",local,"* || ",$extras," == *",dev,"* || ",$extras," == *",server,"* ]] &&
   ! [ -f "$venv/.llama-$(basename "$llama_wheels")" ]; then
  if ! ls "$llama_wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "==> building llama-cpp-python $llama_version: it compiles llama.cpp from source, about 5 minutes, once"
    CMAKE_ARGS="$llama_flags" "$venv/bin/python" -m pip wheel --no-deps --no-cache-dir --progress-bar on \
      -w "$llama_wheels" "llama-cpp-python==$llama_version"
  fi
  "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$llama_wheels"/llama_cpp_python-*.whl
  touch "$venv/.llama-$(basename "$llama_wheels")"
fi
echo "==> installing vstreamer[$extras] into $venv"
# pip's status decides (pipefail), not the filter's (grep finding nothing to show is fine): `| grep … || true` let a
# failed pip pass and stamp the environment, and every later run said "already installed" with the extras missing.
# The import check below does not catch that: an earlier install leaves vstreamer importable.
if ! "$venv/bin/python" -m pip install --progress-bar on -e ".[$extras]" 2>&1 |
  { grep --line-buffered -vE '^(Requirement already satisfied|  Using cached)' || true; }; then
  echo "pip could not install vstreamer[$extras] into $venv (see above); nothing is marked installed" >&2
  exit 1
fi
"$venv/bin/python" -c 'import vstreamer' # fail loudly if the install above did not work
touch "$stamp"
echo "==> done"
