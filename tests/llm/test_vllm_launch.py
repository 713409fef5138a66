"""The production vLLM launch command."""

from __future__ import annotations

import json

import pytest

from tests.conftest import LlamaServer, free_port
from vstreamer.config import VLLMSettings
from vstreamer.errors import BackendTimeout, ConfigError
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
    with pytest.raises(ConfigError):
        build_vllm_command(VLLMSettings(max_num_seqs=512, max_num_batched_tokens=256))


async def test_wait_times_out_with_clear_message() -> None:
    with pytest.raises(BackendTimeout, match="not ready after"):
        await wait_until_ready(f"http://127.0.0.1:{free_port()}/v1", wait_s=1.0, interval=0.2)


@pytest.mark.integration
async def test_wait_sees_a_ready_server(llama_server: LlamaServer) -> None:
    ready = await wait_until_ready(llama_server.base_url, wait_s=10)
    assert ready["models"] == ["smollm2"]
