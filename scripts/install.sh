#!/usr/bin/env bash
# Create the project's virtual environment (.venv) and install vstreamer with the given extras.
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh local   or   scripts/install.sh local,dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-local}"
venv="${VSTREAMER_VENV:-.venv}"

pick_python() {
  for candidate in python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "vstreamer needs Python >= 3.11" >&2; return 1
}

if [ ! -x "$venv/bin/python" ]; then
  python=$(pick_python)
  echo "==> creating virtual environment $venv with $python"
  "$python" -m venv "$venv" || { echo "python venv module missing: apt-get install -y python3-venv" >&2; exit 1; }
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

stamp="$venv/.vstreamer-installed-${extras//,/-}"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  echo "==> vstreamer[$extras] already installed in $venv"
  exit 0
fi

if [[ ",$extras," == *",local,"* || ",$extras," == *",dev,"* ]] &&
   ! "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "==> installing llama-cpp-python: it compiles llama.cpp from source, about 5 minutes the first time"
  echo "    (later installs reuse pip's cached wheel). Progress follows."
fi
echo "==> installing vstreamer[$extras] into $venv"
"$venv/bin/python" -m pip install --progress-bar on -e ".[$extras]" 2>&1 |
  grep --line-buffered -vE '^(Requirement already satisfied|  Using cached)' || true
"$venv/bin/python" -c 'import vstreamer' # fail loudly if the install above did not work
touch "$stamp"
echo "==> done"
