"""The vLLM launch command for the configured model, and what running one needs: a readiness wait, a busy-port
check, a stop that always ends the process.

Production serves Qwen2.5-7B-Instruct on a GPU. Qwen2.5's native context is 32,768 tokens; longer contexts need
YaRN rope scaling with factor = requested / 32768 (static YaRN, which can hurt short texts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from vstreamer.config import VLLMSettings
from vstreamer.errors import BackendTimeout, BackendUnavailable, ConfigError
from vstreamer.llm.openai_compat import served_models
from vstreamer.logs import redact

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

    @property
    def secret_env(self) -> list[str]:
        """Names of the environment entries that hold secrets (the API key)."""
        return [name for name in self.env if _SECRET_NAME.search(name)]

    def shell(self) -> str:
        """The command as one shell line, for people and logs: a secret is a reference to the variable of that name,
        never its value (which ended up in CI logs and terminal scrollback). The shell refuses to run it with the
        variable unset or empty (``VLLM_API_KEY="${VLLM_API_KEY:?...}"``): an empty key starts vLLM with no auth."""
        secret = set(self.secret_env)
        env = " ".join(
            f'{k}="${{{k}:?export {k} first}}"' if k in secret else f"{k}={shlex.quote(v)}"
            for k, v in self.env.items()
        )
        return (env + " " if env else "") + shlex.join(self.argv)


_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)


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
    argv += checked_extra_args(settings.extra_args)
    env: dict[str, str] = {}
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if key:
        env["VLLM_API_KEY"] = key  # in the environment, not argv, so it never shows in `ps`
    return VLLMLaunch(argv, warnings, env)


#: Long flags (without ``--``) that the settings own: set them there. vLLM's parser also takes ``_`` for ``-``,
#: ``--no-`` for a switch's off, dotted keys (``--hf-overrides.x``) and any unambiguous abbreviation (``--max-model``),
#: so a flag is refused when one of these starts with it.
_OWNED_FLAGS = {
    "model": "vllm.model", "served-model-name": "served_model_name", "host": "host", "port": "port",
    "tensor-parallel-size": "tensor_parallel_size", "gpu-memory-utilization": "gpu_memory_utilization",
    "device-memory-utilization": "gpu_memory_utilization", "dtype": "dtype", "max-model-len": "max_model_len",
    "max-num-seqs": "max_num_seqs", "max-num-batched-tokens": "max_num_batched_tokens",
    "quantization": "quantization", "hf-overrides": "max_model_len (YaRN)",
    "enable-auto-tool-choice": "enable_tool_calling", "tool-call-parser": "tool_call_parser",
}  # fmt: skip
#: Short flags of owned settings (``-tp 2``, also ``-tp2``, ``-qgptq``).
_OWNED_SHORT = {"-tp": "tensor_parallel_size", "-q": "quantization"}
#: Flags whose value is a secret: a command line shows in ``ps`` and in printed commands; the environment holds it.
_SECRET_FLAGS = {"api-key": "vllm.api_key", "hf-token": "HF_TOKEN"}


def checked_extra_args(extra: list[str]) -> list[str]:
    """``extra_args`` as given, once none of them sets what the settings own or carries a secret.

    Raises:
        ConfigError: naming the flag and the setting to use instead (a secret: the environment).
    """
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--"):
            name = flag[2:].replace("_", "-").split(".", 1)[0]
            names = (name, name.removeprefix("no-")) if name else ()
            for secret, where in _SECRET_FLAGS.items():
                if any(secret.startswith(n) for n in names):
                    raise ConfigError(
                        f"vllm.extra_args: {flag} would put a secret on the command line (ps and printed commands "
                        f"show it); give it as {where} instead"
                    )
            for owned, setting in _OWNED_FLAGS.items():
                if any(owned.startswith(n) for n in names):
                    raise ConfigError(
                        f"vllm.extra_args: {flag} is set by the vllm setting {setting}; set that"
                    )
        elif flag.startswith("-") and len(flag) > 1:
            for short, setting in _OWNED_SHORT.items():
                if flag.startswith(short):
                    raise ConfigError(
                        f"vllm.extra_args: {flag} is set by the vllm setting {setting}; set that"
                    )
    return list(extra)


async def wait_until_ready(
    base_url: str,
    *,
    wait_s: float = 600.0,
    interval: float = 1.0,
    exited: Callable[[], int | None] | None = None,
    api_key: str | None = None,
) -> dict[str, object]:
    """Poll ``/v1/models`` until the server answers; return what it serves.

    Args:
        exited: the server process's exit code once it has ended, else None (``Popen.poll``): a server that
            crashes at start fails the wait at once instead of after ``wait_s``.
        api_key: sent as a bearer token: a server started with a key answers 401 without it, never "ready".

    Raises:
        BackendTimeout: the server was not ready within ``wait_s`` seconds (with the last error seen).
        BackendUnavailable: the server process exited before it was ready.
    """
    v1 = base_url.rstrip("/")
    _check_url(v1)
    deadline = time.monotonic() + wait_s
    last_error = "no answer yet"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0), headers=headers) as client:
        while time.monotonic() < deadline:
            _raise_if_exited(exited, v1)
            try:
                response = await client.get(f"{v1}/models")
                models = served_models(response.json()) if response.status_code == 200 else None
                if models is not None:
                    _raise_if_exited(exited, v1)  # then the answer came from another server on the port
                    return {"url": v1, "models": models}
                last_error = f"HTTP {response.status_code} from {v1}/models"
                if response.status_code == 200:
                    last_error = f"{v1}/models answered with something other than an OpenAI model list"
            except (httpx.HTTPError, ValueError) as exc:
                last_error = redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            await asyncio.sleep(interval)
    raise BackendTimeout(redact(f"LLM server at {v1} not ready after {wait_s:g}s (last: {last_error})"))


def _check_url(url: str) -> None:
    """Refuse at once a URL no request can be made to (it would fail every try until the timeout, or crash)."""
    try:
        parsed: httpx.URL | None = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(
            redact(f"the server URL must be an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}")
        )


def _raise_if_exited(exited: Callable[[], int | None] | None, v1: str) -> None:
    code = exited() if exited is not None else None
    if code is not None:
        raise BackendUnavailable(f"the LLM server process exited with {code} before {v1} was ready")


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``: wildcard binds answer on loopback."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def local_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` of a server bound to ``host``; IPv6 literals need brackets (``http://[::1]:8000``)."""
    host = connect_host(host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def port_in_use(host: str, port: int) -> bool:
    """Whether something already accepts connections there, e.g. a server left over from an earlier run.

    A new server on that port dies of "address already in use" while the old one answers every readiness check,
    so launchers ask first.
    """
    try:
        with socket.create_connection((connect_host(host).strip("[]"), port), timeout=2.0):
            return True
    except OSError:
        return False


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """Terminate, wait up to ``grace_s``, then kill: a server must never outlive what started it.

    A second Ctrl-C or SIGTERM during the grace period kills at once rather than leave the process behind.
    """
    if process.poll() is not None:
        return
    process.terminate()
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
