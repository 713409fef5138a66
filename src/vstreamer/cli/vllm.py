"""``vstreamer vllm-command | vllm-serve | vllm-wait``: run the production LLM server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vstreamer.config import Settings, VLLMSettings, format_validation_error
from vstreamer.errors import BackendNotInstalled, BackendUnavailable, ConfigError
from vstreamer.llm.vllm_launch import (
    VLLMLaunch,
    build_vllm_command,
    local_url,
    port_in_use,
    stop_process,
    wait_until_ready,
)
from vstreamer.logs import redact


def add_commands(
    commands: Any,
    settings_options: Callable[[argparse.ArgumentParser], None],
    load_settings: Callable[[argparse.Namespace], Settings],
) -> None:
    show = commands.add_parser("vllm-command", help="print the vLLM launch command for the configured model")
    serve = commands.add_parser(
        "vllm-serve", help="run vLLM for the configured model (vLLM must be installed)"
    )
    serve.add_argument("--wait", action="store_true", help="report when the server is ready to answer")
    serve.add_argument("--timeout", type=float, default=900.0, help="seconds --wait allows (default 900)")
    serve.add_argument(
        "--setup-only", action="store_true", help="with --cpu: build the environment and model, then exit"
    )
    for sub in (show, serve):
        settings_options(sub)
        _vllm_options(sub)
    show.set_defaults(handler=lambda a: _show(a, load_settings(a)))
    serve.set_defaults(handler=lambda a: _serve(a, load_settings(a)))

    wait = commands.add_parser("vllm-wait", help="wait until an OpenAI-compatible server is ready")
    wait.add_argument("--url", default=None, help="server URL (default: the configured base_url)")
    wait.add_argument("--timeout", type=float, default=600.0)
    settings_options(wait)
    wait.set_defaults(handler=lambda a: _wait_for_settings(a, load_settings(a)))


def _vllm_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("vLLM")
    group.add_argument(
        "--vllm-model", help="Hugging Face model id or path (default Qwen/Qwen2.5-7B-Instruct)"
    )
    group.add_argument("--served-model-name")
    group.add_argument("--host")
    group.add_argument("--port", type=int, help="vLLM port (default 8000; never the web UI's port)")
    group.add_argument("--tensor-parallel-size", type=int)
    group.add_argument("--gpu-memory-utilization", type=float)
    group.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32", "half"])
    group.add_argument("--max-model-len", type=int, help="context length; above 32768 enables YaRN")
    group.add_argument("--max-num-seqs", type=int)
    group.add_argument("--max-num-batched-tokens", type=int)
    group.add_argument("--quantization", choices=["none", "awq", "gptq"])
    group.add_argument("--no-tools", action="store_true", help="disable tool calling (hermes parser)")
    group.add_argument(
        "--vllm-arg",
        action="append",
        metavar="FLAG",
        help="one more `vllm serve` flag, as given, joined by = (repeat it: --vllm-arg=--enable-prefix-caching); "
        "added after the configured vllm.extra_args (the --cpu profile takes only these)",
    )
    cpu = parser.add_argument_group("vLLM on CPU (tests and development; GPU is the production default)")
    cpu.add_argument(
        "--cpu",
        action="store_true",
        help="the vllm-cpu profile: its own cached virtual environment, serving the embedded model "
        "(--local-model / --model-path) converted to Hugging Face format",
    )


def _show(args: argparse.Namespace, settings: Settings) -> int:
    if args.cpu:
        from vstreamer.llm import vllm_cpu

        checked = cpu_settings(
            args, settings
        )  # before the model's path is worked out (that may read the GGUF)
        return print_command(
            cpu_launch(args, settings, checked, vllm_cpu.venv_python(), _cpu_model_dir(args, settings))
        )
    return print_command(_launch(args, settings))


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.cpu:
        return serve_cpu(args, settings)
    return serve_vllm(args, _launch(args, settings))


def _launch(args: argparse.Namespace, settings: Settings) -> VLLMLaunch:
    fields = {
        "model": args.vllm_model,
        "served_model_name": args.served_model_name,
        "host": args.host,
        "port": args.port,
        "tensor_parallel_size": args.tensor_parallel_size,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "dtype": args.dtype,
        "max_model_len": args.max_model_len,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "quantization": args.quantization,
        "enable_tool_calling": False if args.no_tools else None,
        # after the configured ones (a flag given twice: vLLM takes the last)
        "extra_args": [*settings.vllm.extra_args, *args.vllm_arg] if args.vllm_arg else None,
    }
    return build_vllm_command(_vllm_settings(settings, fields))


def _vllm_settings(settings: Settings, flags: dict[str, Any]) -> VLLMSettings:
    """The configured vLLM settings with the flags given (None: not given), checked as a loaded value is: the port,
    the lengths (``--port 70000`` on the CPU profile loaded vLLM for 19 s before it died of an OverflowError).

    Raises:
        ConfigError: naming every bad value; a port that collides with the web UI's or the gateway's.
    """
    merged = settings.vllm.model_dump() | {k: v for k, v in flags.items() if v is not None}
    try:
        vllm_settings = VLLMSettings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    if vllm_settings.port in (settings.ui_port, settings.gateway_port):
        raise ConfigError(
            f"vLLM port {vllm_settings.port} collides with the web UI or gateway port; choose another"
        )
    return vllm_settings


def print_command(launch: VLLMLaunch) -> int:
    for warning in launch.warnings:
        print(f"# warning: {warning}", file=sys.stderr)
    print(launch.shell())
    _note_secrets(launch)
    return 0


def _note_secrets(launch: VLLMLaunch) -> None:
    """The printed command names its secrets, not their values: say where they come from."""
    for name in launch.secret_env:
        print(f"# note: {name} is not printed; the command takes it from your environment: export it first "
              "(for VLLM_API_KEY, the configured vllm.api_key)", file=sys.stderr)  # fmt: skip


def serve_vllm(args: argparse.Namespace, launch: VLLMLaunch) -> int:
    """Run vLLM in the foreground; every way out (Ctrl-C, SIGTERM, a failed ``--wait``) stops it too.

    An orphaned vLLM would keep the GPU memory and the port, and the next start would fail on both.
    """
    if shutil.which(launch.argv[0]) is None:
        raise BackendNotInstalled(
            "vLLM is not installed here (no `vllm` command); see `vstreamer vllm-command`"
        )
    host, port = _option(launch, "--host"), int(server_port(launch))
    if port_in_use(host, port):
        raise BackendUnavailable(
            f"port {port} is already in use (an earlier vLLM still running?); "
            "stop that server or choose another --port"
        )
    for warning in launch.warnings:
        print(f"# warning: {warning}", file=sys.stderr)
    with sigterm_exits():
        process = subprocess.Popen(launch.argv, env=os.environ | launch.env)
        try:
            if args.wait:
                _wait(f"{local_url(host, port)}/v1", args.timeout, exited=process.poll,
                      api_key=launch.env.get("VLLM_API_KEY"))  # fmt: skip
            return process.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            stop_process(process)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Turn SIGTERM (service managers, ``docker stop``, ``kill``) into a normal exit, so ``finally`` blocks run."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_for_settings(args: argparse.Namespace, settings: Settings) -> int:
    """``vllm-wait``: with the key the gateway would send (the vLLM key if one is set for it)."""
    secret = settings.vllm.api_key or settings.api_key
    key = secret.get_secret_value() if secret is not None else None
    return _wait(args.url or settings.base_url, args.timeout, api_key=None if key == "EMPTY" else key)


def _wait(
    url: str, timeout: float, exited: Callable[[], int | None] | None = None, *, api_key: str | None = None
) -> int:
    ready = asyncio.run(wait_until_ready(url, wait_s=timeout, exited=exited, api_key=api_key))
    print(f"ready: {redact(ready['url'])} serves {ready['models']}")  # a proxy's password stays out of logs
    return 0


# --- the CPU profile -----------------------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def _cpu_model_dir(args: argparse.Namespace, settings: Settings) -> Path:
    """Where the converted model is (or will be): printing the command builds nothing."""
    from vstreamer.llm import vllm_cpu

    if args.vllm_model:
        return Path(args.vllm_model)
    gguf = vllm_cpu.gguf_for(settings.local_model, model_path=settings.model_path)
    return vllm_cpu.converted_dir(gguf)


def cpu_settings(args: argparse.Namespace, settings: Settings) -> VLLMSettings:
    """The CPU profile's own defaults (loopback, a short context) under the flags, checked before anything is built.

    Raises:
        ConfigError: as :func:`_vllm_settings`.
    """
    from vstreamer.llm import vllm_cpu

    return _vllm_settings(settings, {
        "host": args.host or "127.0.0.1",
        "port": args.port,
        "max_model_len": vllm_cpu.DEFAULT_MAX_MODEL_LEN if args.max_model_len is None else args.max_model_len,
        "max_num_seqs": args.max_num_seqs,
        # only the command line's: the configured ones are the GPU server's (fp8 caches, GPU kernels)
        "extra_args": args.vllm_arg or [],
    })  # fmt: skip


def cpu_launch(
    args: argparse.Namespace, settings: Settings, checked: VLLMSettings, python: Path, model_dir: Path
) -> VLLMLaunch:
    """The CPU launch command; ``checked``: :func:`cpu_settings`, worked out before anything was built."""
    from vstreamer.llm import vllm_cpu

    served = args.served_model_name or (
        vllm_cpu.SERVED_NAMES[settings.local_model] if settings.model_path is None else model_dir.name
    )
    return vllm_cpu.build_cpu_command(
        python,
        model_dir,
        served_model_name=served,
        host=checked.host,
        port=checked.port,
        max_model_len=checked.max_model_len,
        max_num_seqs=args.max_num_seqs,  # vLLM's own default when not given
        api_key=checked.api_key.get_secret_value() if checked.api_key else None,
        extra_args=checked.extra_args,
    )


def serve_cpu(args: argparse.Namespace, settings: Settings) -> int:
    """Build (once, cached) the vLLM CPU environment and model, then run the server in the foreground."""
    from vstreamer.llm import vllm_cpu

    checked = cpu_settings(args, settings)  # a bad flag fails now, not after minutes of building and loading
    python = vllm_cpu.ensure_venv(progress=_progress)
    if args.vllm_model:
        model_dir = Path(args.vllm_model)
    else:
        gguf = vllm_cpu.gguf_for(settings.local_model, model_path=settings.model_path)
        model_dir = vllm_cpu.ensure_hf_model(gguf, python, progress=_progress)
    launch = cpu_launch(args, settings, checked, python, model_dir)
    if args.setup_only:
        _progress(f"ready to serve; start it with: {launch.shell()}")
        _note_secrets(launch)
        return 0
    server = vllm_cpu.VLLMCPUServer(
        launch, vllm_cpu.cache_root() / "logs" / f"serve-{server_port(launch)}.log"
    )
    with sigterm_exits():
        server.start(wait_s=args.timeout, progress=_progress)
        print(f"ready: {server.base_url} serves {server.served_name} (Ctrl-C stops it)", flush=True)
        assert server.process is not None
        try:
            return server.process.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            server.stop()


def server_port(launch: VLLMLaunch) -> str:
    return _option(launch, "--port")


def _option(launch: VLLMLaunch, name: str) -> str:
    return launch.argv[launch.argv.index(name) + 1]
