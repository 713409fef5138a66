"""Shared fixtures: real servers on free ports, the embedded model, the shared data folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import hypothesis  # noqa: F401  - imported up front: a late first import in pytest's summary trips a CPython 3.11 AST bug
import pytest

from vstreamer.llm.vllm_cpu import VLLMCPUServer

if TYPE_CHECKING:
    from tests.pg import PostgresServer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = 15) -> None:
    """Terminate a server started by a test, killing it if it does not stop within ``grace`` seconds."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install 'vstreamer[local]')"
    )
    from vstreamer.llm.models import smollm2_path

    return smollm2_path()


#: A chat template as strict as Mistral's (user and assistant turns only, alternating from a user one) that refuses
#: system messages as Gemma's does, in SmolLM2's ChatML markup so that the model still answers sensibly.
STRICT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ raise_exception('System role not supported') }}{%- endif -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@pytest.fixture(scope="session")
def strict_gguf(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the SmolLM2 GGUF (~90 MB, made once a session) whose chat template is :data:`STRICT_CHAT_TEMPLATE`:
    the kind of model vstreamer's prompts must be arranged for."""
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[dev]')")
    target = tmp_path_factory.mktemp("strict") / "SmolLM2-strict-template.gguf"
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(smollm2_gguf), str(target),
         "--chat-template", STRICT_CHAT_TEMPLATE, "--force"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    return target


#: What llama.cpp's OpenAI-compatible server lacks that vLLM has, and why a shared test degrades there.
LLAMA_CPP_MISSING = {
    "tokenize": "llama.cpp's server has no /tokenize for chat messages (only /extras/tokenize for plain text)",
    "stream_usage": "llama.cpp's server streams no usage, even with stream_options.include_usage",
    "min_tokens": "llama.cpp's server ignores min_tokens",
    "version": "llama.cpp's server has no /version or /health",
    "json_schema": "llama.cpp's server takes JSON schemas only in its own json_object dialect (our backend "
    "translates) and its grammar ignores numeric bounds such as minimum/maximum",
    "concurrency": "llama.cpp's server generates for one request at a time",
}


class LlamaServer:
    """``python -m llama_cpp.server`` with the embedded model, on a free port."""

    kind = "llama_cpp"

    def __init__(self, model: Path, alias: str = "smollm2") -> None:
        self.model = model
        self.alias = alias
        self.served_name = alias
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def missing(self, feature: str) -> str | None:
        """Why this server lacks ``feature``, or ``None`` when it has it."""
        return LLAMA_CPP_MISSING.get(feature)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", self.alias,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "4096", "--verbose", "False"]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"{self.base_url}/models", timeout=60, process=self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def llama_server(smollm2_gguf: Path) -> Iterator[LlamaServer]:
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    server = LlamaServer(smollm2_gguf)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_llama_server(smollm2_gguf: Path) -> Iterator[LlamaServer]:
    """A server of its own, for tests that kill it."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    server = LlamaServer(smollm2_gguf)
    server.start()
    yield server
    server.stop()


class VLLMServer:
    """vLLM serving the tests: vLLM CPU (the production server code) started here with the embedded SmolLM2
    converted to Hugging Face format, or one already running elsewhere (``VSTREAMER_VLLM_URL``: real vLLM on a GPU)."""

    kind = "vllm"

    def __init__(self, served_name: str, root_url: str, version: str, log_path: Path | None = None) -> None:
        self.served_name = served_name
        self.alias = served_name
        self.root_url = root_url.rstrip("/")
        self.base_url = f"{self.root_url}/v1"
        self.version = version
        """The vLLM version ``/version`` must report."""
        self.log_path = log_path

    @classmethod
    def started_here(cls, server: VLLMCPUServer) -> VLLMServer:
        from vstreamer.llm.vllm_cpu import VLLM_CPU_VERSION

        return cls(server.served_name, server.root_url, VLLM_CPU_VERSION, server.log_path)

    @classmethod
    def external(cls, v1_url: str) -> VLLMServer:
        """The server at ``v1_url`` (``http://host:port/v1``), serving ``VSTREAMER_VLLM_MODEL`` or its first model."""
        root = v1_url.rstrip("/").removesuffix("/v1")
        models = httpx.get(f"{root}/v1/models", timeout=10).raise_for_status().json()["data"]
        name = os.environ.get("VSTREAMER_VLLM_MODEL") or models[0]["id"]
        version = httpx.get(f"{root}/version", timeout=10).raise_for_status().json()["version"]
        return cls(name, root, version)

    def missing(self, feature: str) -> str | None:
        if feature == "model_text" and os.environ.get("VSTREAMER_VLLM_DUMMY_WEIGHTS"):
            return (
                "VSTREAMER_VLLM_DUMMY_WEIGHTS: the model's weights are random, so what it says means nothing"
            )
        return None


OpenAIServer = LlamaServer | VLLMServer


def _say(request: pytest.FixtureRequest, message: str) -> None:
    """Progress a person watching CI should see even while pytest captures output."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n[vllm-cpu] {message}", file=sys.stderr, flush=True)  # noqa: T201


def _start_vllm(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    local_model: str,
    *,
    extra_args: Sequence[str] = (),
) -> VLLMCPUServer:
    if os.environ.get("VSTREAMER_SKIP_VLLM"):
        pytest.skip("VSTREAMER_SKIP_VLLM is set: vLLM CPU tests are off")
    from vstreamer.errors import BackendNotInstalled
    from vstreamer.llm import vllm_cpu

    try:
        prepared = vllm_cpu.prepare(local_model, progress=lambda m: _say(request, m))
    except BackendNotInstalled as exc:
        pytest.skip(f"vLLM CPU cannot serve {local_model} here: {exc}")
    launch = vllm_cpu.build_cpu_command(
        prepared.python, prepared.model_dir, served_model_name=prepared.served_name, port=free_port(),
        extra_args=extra_args,
    )  # fmt: skip
    server = vllm_cpu.VLLMCPUServer(launch, tmp_path_factory.mktemp("vllm") / f"{local_model}.log")
    server.start(wait_s=240, progress=lambda m: _say(request, m))
    return server


def _vllm_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, local_model: str
) -> Iterator[VLLMServer]:
    if url := os.environ.get("VSTREAMER_VLLM_URL"):
        _say(
            request, f"using the vLLM already running at {url} (VSTREAMER_VLLM_URL) for {local_model}'s tests"
        )
        yield VLLMServer.external(url)
        return
    server = _start_vllm(request, tmp_path_factory, local_model)
    yield VLLMServer.started_here(server)
    server.stop()


@pytest.fixture(scope="session")
def vllm_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """One vLLM CPU server (SmolLM2) for the whole session (~4 GB RAM, ~30 s to start); its log is shown on failure.
    With ``VSTREAMER_VLLM_URL`` set, the vLLM running there instead."""
    yield from _vllm_fixture(request, tmp_path_factory, "smollm2")


@pytest.fixture(scope="session")
def vllm_qwen_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """vLLM CPU serving Qwen2.5-0.5B: the production model's tokenizer and chat template (opt-in extra ``qwen``).
    With ``VSTREAMER_VLLM_URL`` set, the vLLM running there instead (it should serve a Qwen2.5 model)."""
    yield from _vllm_fixture(request, tmp_path_factory, "qwen2.5-0.5b")


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("llama_cpp", marks=pytest.mark.integration),
        pytest.param("vllm", marks=[pytest.mark.integration, pytest.mark.vllm]),
    ],
)
def openai_server(request: pytest.FixtureRequest) -> OpenAIServer:
    """Each OpenAI-compatible server the shared tests run against: llama.cpp's and vLLM's."""
    server: OpenAIServer = request.getfixturevalue(
        "llama_server" if request.param == "llama_cpp" else "vllm_server"
    )
    return server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests run last: Playwright's sync API drives its own event loop in this process."""
    items.sort(
        key=lambda item: "tests/ui/" in item.nodeid.replace("\\", "/") or item.nodeid.startswith("ui/")
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole run (tests make a database each)."""
    from tests.pg import PostgresServer, postgres_bin

    if postgres_bin() is None:
        pytest.skip(
            "PostgreSQL server binaries not installed (apt-get install postgresql): PostgreSQL tests skipped"
        )
    # Not under pytest's tmp dir: that one is private to root, and PostgreSQL runs as its own user.
    root = Path(tempfile.mkdtemp(prefix="vstreamer-pg-"))
    server = PostgresServer(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
