#!/usr/bin/env bash
# The production path on real vLLM and a real GPU: `vstreamer vllm-serve` launches vLLM with the production
# profile (Qwen2.5-7B-Instruct's architecture, tool calling, 32k context), then the vLLM tests (tests/vllm) run
# against it, and bench/bench_gateway.py measures direct vLLM against vLLM through the gateway.
#
#   SITE=DIR MODEL_DIR=DIR [OUT=DIR] [DUMMY=1] [STRICT=0] [YARN=1] scripts/gpu_check.sh
#
# SITE: a folder of Python packages the machine lacks (vLLM and its needs, vstreamer's needs), put first on the
# path; empty when all are installed. MODEL_DIR: a Hugging Face model folder. DUMMY=1: vLLM fills the weights
# with random values (`--load-format dummy`), so a folder with only config.json and the tokenizer will do, on a
# machine that cannot download the weights: every test here checks the serving path (streams, usage, token
# counts, aborts, sampling parameters), not what the model says. Then (unless STRICT=0) vLLM starts again with a
# strict chat template (no system role, roles must alternate: how Mistral, Llama 2 and Gemma refuse vstreamer's
# prompts as built) and tests/vllm/test_strict_roles.py runs against it. YARN=1: afterwards, the launch above 32k
# tokens (YaRN rope scaling) must start too. Writes its logs to OUT (default /tmp/gpu-check); exits non-zero on a failure.
#
# For a machine with no package index: on a machine with one, `pip download --no-deps --only-binary=:all:
# --python-version 3.12 --platform manylinux_2_28_x86_64 ...` the set `pip install --dry-run --report` resolves
# for `vllm==X` (X: the release pinning the machine's torch), less what the machine has, then
# `pip install --no-deps --target SITE` them there.
set -uo pipefail
: "${SITE?set SITE (empty: every package is installed)}" "${MODEL_DIR:?set MODEL_DIR}"
cd "$(dirname "$0")/.."  # the repository's root: its src/, tests/ and bench/
OUT=${OUT:-/tmp/gpu-check}
PORT=${PORT:-8000}
mkdir -p "$OUT" /tmp/gpu-check-bin
export PYTHONPATH="${SITE:+$SITE:}$PWD/src:$PWD" HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
# `vllm` as the launcher calls it, whatever interpreter the packages were installed for
printf '#!/bin/sh\nexec python3 -m vllm.entrypoints.cli.main "$@"\n' >/tmp/gpu-check-bin/vllm
chmod +x /tmp/gpu-check-bin/vllm
export PATH="/tmp/gpu-check-bin:$PATH"
extra=(--vllm-arg=--enforce-eager)  # no CUDA-graph capture: a quicker start for a check
if [ "${DUMMY:-0}" = 1 ]; then
  extra+=(--vllm-arg=--load-format=dummy)
  export VSTREAMER_VLLM_DUMMY_WEIGHTS=1  # the tests that read what the model says are skipped
fi
# This build carries no FlashInfer; vLLM's sampler otherwise imports it on NVIDIA GPUs
export VLLM_USE_FLASHINFER_SAMPLER=${VLLM_USE_FLASHINFER_SAMPLER:-0}
status=0
server=
trap 'stop' EXIT  # never leave vLLM holding the GPU and the port, however the script ends
trap 'exit 130' INT TERM HUP

say() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }

# serve MAX_MODEL_LEN LOG: start vLLM through vstreamer and wait until it is ready (or gone); sets $server
serve() {
  python3 -m vstreamer vllm-command --vllm-model "$MODEL_DIR" --host 127.0.0.1 --port "$PORT" \
    --max-model-len "$1" "${extra[@]}" >>"$OUT/summary.txt" 2>&1
  python3 -m vstreamer vllm-serve --vllm-model "$MODEL_DIR" --host 127.0.0.1 --port "$PORT" \
    --max-model-len "$1" "${extra[@]}" --wait --timeout 420 >"$2" 2>&1 &
  server=$!
  until grep -q '^ready:' "$2"; do
    if ! kill -0 "$server" 2>/dev/null; then
      say "vLLM did not start (max_model_len $1):"; tail -40 "$2" | tee -a "$OUT/summary.txt"; return 1
    fi
    sleep 2
  done
  say "$(grep '^ready:' "$2")"
}

stop() {
  [ -n "$server" ] || return 0
  kill "$server" 2>/dev/null  # vllm-serve stops its vLLM on SIGTERM
  wait "$server" 2>/dev/null
  server=
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, vllm, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "vllm", vllm.__version__)' \
  | tee -a "$OUT/summary.txt" || exit 1

say "start: production profile, max_model_len 32768"
serve 32768 "$OUT/vllm.log" || exit 1
say "tests/vllm against it"
VSTREAMER_VLLM_URL="http://127.0.0.1:$PORT/v1" timeout 300 python3 -m pytest tests/vllm -p no:cacheprovider -q \
  -o addopts="-ra --strict-markers" >"$OUT/pytest.log" 2>&1 || status=1
tail -15 "$OUT/pytest.log" | tee -a "$OUT/summary.txt"
say "bench: direct vLLM vs through the gateway"
timeout 240 python3 bench/bench_gateway.py --upstream "http://127.0.0.1:$PORT/v1" --max-tokens 8 --requests 40 \
  --warmup 5 --rounds 2 --streams 1,16,64 --litellm none >"$OUT/bench.log" 2>&1 || status=1
tee -a "$OUT/summary.txt" <"$OUT/bench.log"
stop

if [ "${STRICT:-1}" = 1 ]; then
  say "start: a strict chat template (no system role, alternating roles), max_model_len 8192"
  python3 -c 'from tests.conftest import STRICT_CHAT_TEMPLATE as t; print(t, end="")' >/tmp/gpu-check-bin/strict.jinja || exit 1
  extra+=(--vllm-arg=--chat-template=/tmp/gpu-check-bin/strict.jinja)
  if serve 8192 "$OUT/vllm-strict.log"; then
    VSTREAMER_VLLM_STRICT_URL="http://127.0.0.1:$PORT/v1" timeout 120 python3 -m pytest tests/vllm/test_strict_roles.py \
      -p no:cacheprovider -q -o addopts="-ra --strict-markers" >"$OUT/pytest-strict.log" 2>&1 || status=1
    tail -8 "$OUT/pytest-strict.log" | tee -a "$OUT/summary.txt"
    stop
  else
    status=1
  fi
  unset 'extra[${#extra[@]}-1]'
fi

if [ "${YARN:-0}" = 1 ]; then
  say "start: max_model_len 65536 (YaRN)"
  if serve 65536 "$OUT/vllm-yarn.log"; then
    curl -s "http://127.0.0.1:$PORT/v1/models" | python3 -c 'import json,sys; m=json.load(sys.stdin)["data"][0]; print("serves", m["id"], "max_model_len", m["max_model_len"])' \
      | tee -a "$OUT/summary.txt" || status=1
    stop
  else
    status=1
  fi
fi
say "done, status $status"
exit $status
