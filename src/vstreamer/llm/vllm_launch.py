"""The vLLM launch command for the configured model, and a readiness wait.

Production serves Qwen2.5-7B-Instruct on a GPU. Qwen2.5's native context is 32,768 tokens; longer contexts need
YaRN rope scaling with factor = requested / 32768 (static YaRN, which can hurt short texts).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from dataclasses import dataclass, field

import httpx

from vstreamer.config import VLLMSettings
from vstreamer.errors import BackendTimeout, ConfigError

QWEN_NATIVE_CONTEXT = 32768
QWEN_ROPE_THETA = 1_000_000
_QUANTIZED_VARIANTS = {
    "awq": "Qwen/Qwen2.5-7B-Instruct-AWQ",
    "gptq": "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4",
}
_DEFAULT_MODEL = "Qwen/Qwen2.5-7B-Instruct"


@dataclass(frozen=True)
class VLLMLaunch:
    """A ready-to-run vLLM command line."""

    argv: list[str]
    warnings: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)


def build_vllm_command(settings: VLLMSettings, *, api_key: str | None = None) -> VLLMLaunch:
    """The ``vllm serve`` command for production (GPU)."""
    warnings: list[str] = []
    model = settings.model
    dtype = settings.dtype
    if settings.quantization != "none":
        if model == _DEFAULT_MODEL:
            model = _QUANTIZED_VARIANTS[settings.quantization]
        elif settings.quantization.upper() not in model.upper():
            warnings.append(
                f"--quantization {settings.quantization} expects a {settings.quantization.upper()} checkpoint; {model} may not be one"
            )
        if dtype == "auto":
            dtype = "float16"  # AWQ/GPTQ kernels run in fp16
    argv = [
        "vllm", "serve", model,
        "--served-model-name", settings.served_model_name,
        "--host", settings.host,
        "--port", str(settings.port),
        "--tensor-parallel-size", str(settings.tensor_parallel_size),
        "--gpu-memory-utilization", f"{settings.gpu_memory_utilization:g}",
        "--dtype", dtype,
        "--max-model-len", str(settings.max_model_len),
        "--max-num-seqs", str(settings.max_num_seqs),
    ]  # fmt: skip
    if settings.max_num_batched_tokens is not None:
        if settings.max_num_batched_tokens < settings.max_num_seqs:
            raise ConfigError("max_num_batched_tokens must be at least max_num_seqs")
        argv += ["--max-num-batched-tokens", str(settings.max_num_batched_tokens)]
    if settings.quantization != "none":
        argv += ["--quantization", settings.quantization]
    if settings.max_model_len > QWEN_NATIVE_CONTEXT:
        factor = settings.max_model_len / QWEN_NATIVE_CONTEXT
        rope = {
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": round(factor, 4),
                "original_max_position_embeddings": QWEN_NATIVE_CONTEXT,
                "rope_theta": QWEN_ROPE_THETA,
            }
        }
        argv += ["--hf-overrides", json.dumps(rope, separators=(",", ":"))]
        warnings.append(
            f"max_model_len {settings.max_model_len} > {QWEN_NATIVE_CONTEXT}: YaRN rope scaling (factor {factor:g}) "
            "is enabled; vLLM's YaRN is static and can lower quality on short texts — use it only if you need it"
        )
    if settings.enable_tool_calling:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", settings.tool_call_parser]
    env: dict[str, str] = {}
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if key:
        env["VLLM_API_KEY"] = key  # in the environment, not argv, so it never shows in `ps`
    return VLLMLaunch(argv, warnings, env)


async def wait_until_ready(
    base_url: str, *, wait_s: float = 600.0, interval: float = 1.0
) -> dict[str, object]:
    """Poll ``/v1/models`` until the server answers; return what it serves.

    Raises:
        BackendTimeout: the server was not ready within ``wait_s`` seconds (with the last error seen).
    """
    v1 = base_url.rstrip("/")
    deadline = time.monotonic() + wait_s
    last_error = "no answer yet"
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as client:
        while time.monotonic() < deadline:
            try:
                response = await client.get(f"{v1}/models")
                if response.status_code == 200:
                    models = [m.get("id") for m in response.json().get("data", [])]
                    return {"url": v1, "models": models}
                last_error = f"HTTP {response.status_code} from {v1}/models"
            except (httpx.HTTPError, ValueError) as exc:
                last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await asyncio.sleep(interval)
    raise BackendTimeout(f"LLM server at {v1} not ready after {wait_s:g}s (last: {last_error})")
