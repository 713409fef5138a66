"""The production vLLM launch command (GPU), and the vllm-cpu profile for tests and development."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LlamaServer, free_port
from vstreamer.config import VLLMSettings
from vstreamer.errors import BackendTimeout, BackendUnavailable, ConfigError
from vstreamer.llm import vllm_cpu
from vstreamer.llm.vllm_launch import build_vllm_command, wait_until_ready


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_default_is_qwen_7b_with_tools() -> None:
    launch = build_vllm_command(VLLMSettings())
    argv = launch.argv
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    assert option(argv, "--served-model-name") == "qwen2.5-7b-instruct"
    assert option(argv, "--tensor-parallel-size") == "1"
    assert option(argv, "--gpu-memory-utilization") == "0.9"
    assert option(argv, "--max-model-len") == "32768"
    assert option(argv, "--tool-call-parser") == "hermes"
    assert "--enable-auto-tool-choice" in argv
    assert "--hf-overrides" not in argv
    assert launch.warnings == []


@pytest.mark.parametrize(
    ("quant", "model"),
    [("awq", "Qwen/Qwen2.5-7B-Instruct-AWQ"), ("gptq", "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4")],
)
def test_quantised_variants(quant: str, model: str) -> None:
    argv = build_vllm_command(VLLMSettings(quantization=quant)).argv  # type: ignore[arg-type]
    assert argv[2] == model
    assert option(argv, "--quantization") == quant
    assert option(argv, "--dtype") == "float16"


def test_long_context_only_with_yarn() -> None:
    launch = build_vllm_command(VLLMSettings(max_model_len=131072))
    rope = json.loads(option(launch.argv, "--hf-overrides"))["rope_parameters"]
    assert rope["rope_type"] == "yarn"
    assert rope["factor"] == 4.0
    assert rope["original_max_position_embeddings"] == 32768
    assert any("short texts" in w for w in launch.warnings)


def test_extra_args_are_passed_through_as_given() -> None:
    extra = ["--enable-prefix-caching", "--load-format=dummy", "--kv-cache-dtype", "fp8"]
    argv = build_vllm_command(VLLMSettings(extra_args=extra)).argv
    assert argv[-len(extra) :] == extra
    assert argv.count("--port") == 1


@pytest.mark.parametrize(
    "flag",
    [
        "--port", "--port=8100", "--max_model_len=4096", "--api-key", "--api_key=s3cret", "-tp", "--model",
        "--hf-token=s3cret", "--hf_token",
        # vLLM's parser takes abbreviations, aliases, --no- switches, dotted keys and attached short values
        "--max-model", "--max-model=4096", "--max_model=4096", "--gpu-memory=0.5", "--device-memory-utilization=0.5",
        "--tensor-parallel=2", "--served=x", "--por=9999", "-qgptq", "-tp2", "--hf-overrides.rope_parameters.factor",
        "--no-enable-auto-tool-choice", "--tool-call=pythonic", "--api-ke=s3cret", "--hf-tok=s3cret",
    ],
)  # fmt: skip
def test_extra_args_may_not_set_what_the_settings_own(flag: str) -> None:
    with pytest.raises(ConfigError, match="vllm.extra_args") as caught:
        build_vllm_command(VLLMSettings(extra_args=[flag, "1"]))
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "flag",
    [
        "--tokenizer", "--tokenizer-mode=slow", "--skip-tokenizer-init", "--long-prefill-token-threshold=64",
        "--enable-prompt-tokens-details", "--return-tokens-as-token-ids", "--ssl-keyfile=/k.pem",
        "--enable-prefix-caching", "--no-enable-prefix-caching", "--model-impl=vllm", "--kv-cache-dtype=fp8",
        "-O3", "-dp=2", "--max-num-partial-prefills=2",
    ],
)  # fmt: skip
def test_extra_args_that_own_nothing_pass(flag: str) -> None:
    assert build_vllm_command(VLLMSettings(extra_args=[flag])).argv[-1] == flag


def test_cpu_command_takes_the_same_extra_args(tmp_path: Path) -> None:
    launch = vllm_cpu.build_cpu_command(
        Path("/py"), tmp_path, served_model_name="m", extra_args=["--seed", "7"]
    )
    assert launch.argv[-2:] == ["--seed", "7"]
    with pytest.raises(ConfigError):
        vllm_cpu.build_cpu_command(Path("/py"), tmp_path, served_model_name="m", extra_args=["--dtype=half"])


def test_batching_options_and_api_key_stays_out_of_argv() -> None:
    launch = build_vllm_command(
        VLLMSettings(max_num_seqs=32, max_num_batched_tokens=8192, tensor_parallel_size=2),
        api_key="s3cret-key",
    )
    assert option(launch.argv, "--max-num-seqs") == "32"
    assert option(launch.argv, "--max-num-batched-tokens") == "8192"
    assert option(launch.argv, "--tensor-parallel-size") == "2"
    assert "s3cret-key" not in " ".join(launch.argv)
    assert launch.env["VLLM_API_KEY"] == "s3cret-key"
    # nor in the command printed for people and logs: a reference to the variable instead
    assert "s3cret-key" not in launch.shell() and launch.shell().startswith(
        'VLLM_API_KEY="${VLLM_API_KEY:?export VLLM_API_KEY first}" vllm '
    )
    # Run without the variable, the line stops before vLLM starts (an empty key would start it with no auth).
    echoed = launch.shell().replace(" vllm serve ", " echo started ", 1)
    unset = subprocess.run(
        ["bash", "-c", echoed], capture_output=True, text=True, env={"PATH": os.environ["PATH"]}
    )
    assert unset.returncode != 0 and "started" not in unset.stdout
    assert "export VLLM_API_KEY first" in unset.stderr
    given = subprocess.run(
        ["bash", "-c", echoed.replace(" echo started ", ' sh -c "echo \\$VLLM_API_KEY" ', 1)],
        capture_output=True, text=True, env={"PATH": os.environ["PATH"], "VLLM_API_KEY": "from-env"},
    )  # fmt: skip
    assert given.stdout.strip() == "from-env"
    with pytest.raises(ConfigError):
        build_vllm_command(VLLMSettings(max_num_seqs=512, max_num_batched_tokens=256))


async def test_wait_times_out_with_clear_message() -> None:
    with pytest.raises(BackendTimeout, match="not ready after"):
        await wait_until_ready(f"http://127.0.0.1:{free_port()}/v1", wait_s=1.0, interval=0.2)


@pytest.mark.integration
async def test_wait_sees_a_ready_server(llama_server: LlamaServer) -> None:
    ready = await wait_until_ready(llama_server.base_url, wait_s=10)
    assert ready["models"] == ["smollm2"]


# --- the CPU profile (vllm-cpu) ---------------------------------------------------------------------------------


def test_cpu_command_uses_the_module_entry_point_and_cpu_env(tmp_path: Path) -> None:
    launch = vllm_cpu.build_cpu_command(
        tmp_path / "bin" / "python", tmp_path / "model", served_model_name="smollm2", port=8123, api_key="k3y"
    )
    argv = launch.argv
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]  # `vllm serve` fails in this build
    assert option(argv, "--model") == str(tmp_path / "model")
    assert option(argv, "--served-model-name") == "smollm2"
    assert option(argv, "--host") == "127.0.0.1"
    assert option(argv, "--dtype") == "bfloat16"
    assert option(argv, "--max-model-len") == "2048"
    assert "--enforce-eager" in argv and "--gpu-memory-utilization" not in argv
    assert launch.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and launch.env["HF_HUB_OFFLINE"] == "1"
    assert launch.env["VLLM_API_KEY"] == "k3y" and "k3y" not in argv


def test_cpu_cache_is_keyed_by_the_pinned_versions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VSTREAMER_VLLM_CPU_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert vllm_cpu.cache_root() == tmp_path / "vstreamer" / "vllm-cpu"
    name = vllm_cpu.venv_dir().name
    assert vllm_cpu.VLLM_CPU_VERSION in name and vllm_cpu.TORCH_VERSION in name
    gguf = tmp_path / "Model.Q4.gguf"
    gguf.write_bytes(b"x" * 10)
    digest = hashlib.sha256(b"x" * 10).hexdigest()[:12]
    assert vllm_cpu.converted_dir(gguf).name == f"model.q4-{digest}-{vllm_cpu.CONVERT_FORMAT}"


def test_a_built_environment_is_reused(tmp_path: Path) -> None:
    python = vllm_cpu.venv_python(tmp_path)
    python.parent.mkdir(parents=True)
    (vllm_cpu.venv_dir(tmp_path) / ".vstreamer-ready.json").write_text("{}")
    said: list[str] = []
    assert vllm_cpu.ensure_venv(tmp_path, progress=said.append) == python
    assert said == []  # nothing rebuilt, nothing to report


def test_file_lock_reports_waiting(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    with vllm_cpu.file_lock(lock, "thing"):
        code = (
            "import sys; from pathlib import Path; from vstreamer.llm.vllm_cpu import file_lock\n"
            "with file_lock(Path(sys.argv[1]), 'thing', print): pass"
        )
        waiter = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert waiter.poll() is None  # blocked while we hold the lock
    out, _ = waiter.communicate(timeout=20)
    assert "waiting for another process that is preparing thing" in out


def test_cpu_server_that_dies_shows_its_log(tmp_path: Path) -> None:
    script = tmp_path / "fake_vllm.py"
    script.write_text("import sys; print('boom: not enough memory for the KV cache'); sys.exit(3)\n")
    launch = vllm_cpu.build_cpu_command(
        Path(sys.executable), tmp_path, served_model_name="m", port=free_port()
    )
    launch.argv[1:3] = [str(script)]
    server = vllm_cpu.VLLMCPUServer(launch, tmp_path / "log" / "server.log")
    with pytest.raises(BackendUnavailable, match="not enough memory for the KV cache"):
        server.start(wait_s=20)
    assert server.process is None


def test_cli_prints_the_cpu_command(capsys: pytest.CaptureFixture[str]) -> None:
    from vstreamer.cli import main

    assert main(["vllm-command", "--cpu", "--port", "8124"]) == 0
    out = capsys.readouterr().out
    assert "-m vllm.entrypoints.openai.api_server" in out and "--port 8124" in out
    assert "VLLM_CPU_KVCACHE_SPACE=1" in out and "--served-model-name smollm2" in out
    assert main(["vllm-command"]) == 0  # the GPU profile stays the default
    assert capsys.readouterr().out.startswith("vllm serve Qwen/Qwen2.5-7B-Instruct ")
    assert main(["vllm-command", "--vllm-arg=--enable-prefix-caching", "--vllm-arg=--seed=7"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(" --enable-prefix-caching --seed=7")
    assert main(["vllm-command", "--cpu", "--vllm-arg=--seed=7"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(" --seed=7")


def test_command_line_extra_args_follow_the_configured_ones(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vstreamer.cli import main

    monkeypatch.setenv(
        "VSTREAMER_VLLM__EXTRA_ARGS", '["--enable-prefix-caching", "--kv-cache-dtype=fp8_e4m3"]'
    )
    assert main(["vllm-command"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(" --enable-prefix-caching --kv-cache-dtype=fp8_e4m3")
    assert main(["vllm-command", "--vllm-arg=--enforce-eager"]) == 0
    assert (
        capsys.readouterr()
        .out.rstrip()
        .endswith(" --enable-prefix-caching --kv-cache-dtype=fp8_e4m3 --enforce-eager")
    )
    # The CPU profile is not the GPU server: the configured flags (fp8 caches, GPU kernels) stay out of it.
    assert main(["vllm-command", "--cpu", "--vllm-arg=--seed=7"]) == 0
    out = capsys.readouterr().out
    assert "--kv-cache-dtype" not in out and out.rstrip().endswith(" --enforce-eager --seed=7")


async def test_wait_fails_at_once_when_the_server_process_exits() -> None:
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="exited with 3"):
        await wait_until_ready(
            f"http://127.0.0.1:{free_port()}/v1", wait_s=20, interval=0.2, exited=lambda: 3
        )
    assert time.monotonic() - started < 5


# A stand-in for vLLM's OpenAI server: /health, and /v1/models listing $FAKE_SERVES (default: its served name).
_FAKE_SERVER = """
import argparse, http.server, json, os, socket
parser = argparse.ArgumentParser()
for name in ("--served-model-name", "--host", "--port"):
    parser.add_argument(name)
args, _ = parser.parse_known_args()
served = os.environ.get("FAKE_SERVES", args.served_model_name)
key = os.environ.get("VLLM_API_KEY")

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            status, body = 200, b""
        elif key and self.headers.get("Authorization") != f"Bearer {key}":
            status, body = 401, b"{}"
        else:
            status, body = 200, json.dumps({"data": [{"id": served}]}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

class Server(http.server.HTTPServer):
    address_family = socket.AF_INET6 if ":" in args.host else socket.AF_INET

Server((args.host, int(args.port)), Handler).serve_forever()
"""


def _fake_cpu_server(
    tmp_path: Path, *, host: str = "127.0.0.1", port: int | None = None
) -> vllm_cpu.VLLMCPUServer:
    script = tmp_path / "fake_vllm_server.py"
    script.write_text(_FAKE_SERVER)
    launch = vllm_cpu.build_cpu_command(
        Path(sys.executable),
        tmp_path,
        served_model_name="m",
        host=host,
        port=port or free_port(),
        api_key="k3y",
    )
    launch.argv[1:3] = [str(script)]
    return vllm_cpu.VLLMCPUServer(launch, tmp_path / "log" / "server.log")


def test_cpu_server_ready_when_it_serves_its_model(tmp_path: Path) -> None:
    server = _fake_cpu_server(tmp_path)
    try:
        server.start(wait_s=20)
        assert server.process is not None and server.process.poll() is None
    finally:
        server.stop()


def test_cpu_server_refuses_a_port_another_server_holds(tmp_path: Path) -> None:
    other = _fake_cpu_server(tmp_path)  # e.g. a vLLM left over from an earlier run
    other.start(wait_s=20)
    try:
        server = vllm_cpu.VLLMCPUServer(other.launch, tmp_path / "log" / "second.log")
        with pytest.raises(BackendUnavailable, match="already in use"):
            server.start(wait_s=20)
        assert server.process is None and not server.log_path.exists()  # nothing was started
    finally:
        other.stop()


def test_cpu_server_answering_with_another_model_is_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SERVES", "some-other-model")
    server = _fake_cpu_server(tmp_path)
    with pytest.raises(BackendUnavailable, match=r"not 'm'"):
        server.start(wait_s=20)
    assert server.process is None  # stopped


def _ipv6_loopback_port() -> int:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
            return int(sock.getsockname()[1])
    except OSError:
        pytest.skip("no IPv6 loopback here")


def test_cpu_server_on_ipv6_loopback(tmp_path: Path) -> None:
    port = _ipv6_loopback_port()
    server = _fake_cpu_server(tmp_path, host="::1", port=port)
    assert server.base_url == f"http://[::1]:{port}/v1"
    try:
        server.start(wait_s=20)
    finally:
        server.stop()


def _fake_converter(tmp_path: Path) -> Path:
    """Stands in for the environment's Python running the conversion: records which GGUF it converted."""
    python = tmp_path / "fake-python"
    python.write_text(
        '#!/bin/sh\n# argv: -c SCRIPT folder name out\nmkdir -p "$5" && echo "$3/$4" > "$5/config.json"\n'
    )
    python.chmod(0o755)
    return python


def test_same_name_and_size_ggufs_get_their_own_conversion(tmp_path: Path) -> None:
    python, root = _fake_converter(tmp_path), tmp_path / "cache"
    a, b = tmp_path / "finetune-a" / "model-Q4_K_M.gguf", tmp_path / "finetune-b" / "model-Q4_K_M.gguf"
    for path, fill in ((a, b"A"), (b, b"B")):  # same name, same size, different weights
        path.parent.mkdir()
        path.write_bytes(fill * 4096)
    out_a = vllm_cpu.ensure_hf_model(a, python, root)
    out_b = vllm_cpu.ensure_hf_model(b, python, root)
    assert out_a != out_b
    assert (out_a / "config.json").read_text().strip() == str(a)
    assert (out_b / "config.json").read_text().strip() == str(b)
    assert out_a.name.startswith("model-q4_k_m-")  # still readable


def test_conversion_follows_the_content_not_the_path(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"A" * 4096)
    first = vllm_cpu.converted_dir(gguf, root)
    assert vllm_cpu.converted_dir(gguf, root) == first  # the cached digest
    copy = tmp_path / "elsewhere" / "model.gguf"
    copy.parent.mkdir()
    copy.write_bytes(gguf.read_bytes())
    assert vllm_cpu.converted_dir(copy, root) == first  # same weights, one conversion
    gguf.write_bytes(b"B" * 4096)  # replaced in place: same path and size, new weights
    os.utime(gguf, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert vllm_cpu.converted_dir(gguf, root) != first
