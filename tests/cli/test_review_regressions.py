"""Regressions a review found in the command line: the installer, the vLLM commands, settings, personas."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_vllm import serving_models
from tests.conftest import PROJECT_ROOT, free_port
from vstreamer.cli import main
from vstreamer.config import Settings
from vstreamer.errors import ConfigError
from vstreamer.llm import vllm_cpu
from vstreamer.persona import PersonaLibrary, load_persona_bytes
from vstreamer.runtime import open_runtime
from vstreamer.store import open_store
from vstreamer.ui.options import UIOptions

SECRET = "sk-review-SECRET-0123456789"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "data"
    monkeypatch.setenv("VSTREAMER_DATA_DIR", str(folder))
    return folder


def card(name: str, description: str = "a test persona") -> bytes:
    return json.dumps(
        {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": name, "description": description}}
    ).encode()


# --- scripts/install.sh ----------------------------------------------------------------------------------------


def _fake_venv(folder: Path, pip: str) -> Path:
    """A virtual environment whose ``pip`` runs the shell code ``pip`` and whose Python imports vstreamer (as an
    earlier install leaves it)."""
    (folder / "bin").mkdir(parents=True)
    python = folder / "bin" / "python"
    python.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then {pip}; fi\nexit 0\n')
    python.chmod(0o755)
    return folder


def _install(venv: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(PROJECT_ROOT / "scripts" / "install.sh"), "qwen"],  # an extra without the llama.cpp build
        capture_output=True, text=True, timeout=60, env=os.environ | {"VSTREAMER_VENV": str(venv)},
    )  # fmt: skip


def test_install_stops_when_pip_fails_and_marks_nothing_installed(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path / "venv", 'echo "ERROR: No matching distribution" >&2; exit 1')
    for _ in range(2):  # the second run said "already installed"
        result = _install(venv)
        assert result.returncode != 0, result.stdout
        assert "already installed" not in result.stdout and "done" not in result.stdout
        assert "No matching distribution" in result.stdout + result.stderr
    assert not list(venv.glob(".vstreamer-installed-*"))


def test_install_whose_pip_output_is_all_filtered_succeeds(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path / "venv", 'echo "Requirement already satisfied: x"; exit 0')
    assert _install(venv).returncode == 0
    again = _install(venv)
    assert again.returncode == 0 and "already installed" in again.stdout


# --- the vLLM API key is never printed -------------------------------------------------------------------------


@pytest.mark.parametrize("cpu", [False, True])
def test_printed_vllm_commands_never_show_the_api_key(
    cpu: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VSTREAMER_VLLM__API_KEY", SECRET)
    assert main(["vllm-command", *(["--cpu"] if cpu else [])]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert (
        'VLLM_API_KEY="${VLLM_API_KEY:?export VLLM_API_KEY first}"' in out
    )  # still a command that runs, with the key from the environment


def test_cpu_setup_progress_never_shows_the_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``scripts/vllm-cpu setup`` runs in ``make test``: its last line landed in CI logs, key and all."""
    monkeypatch.setenv("VSTREAMER_VLLM__API_KEY", SECRET)
    monkeypatch.setattr(vllm_cpu, "ensure_venv", lambda progress: Path(sys.executable))
    monkeypatch.setattr(vllm_cpu, "ensure_hf_model", lambda gguf, python, progress: tmp_path)
    assert main(["vllm-serve", "--cpu", "--setup-only"]) == 0
    out, err = capsys.readouterr()
    assert "ready to serve" in err and SECRET not in out + err


# --- vllm-wait ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://[::1", "ftp://127.0.0.1/v1", "http:///v1"])
def test_waiting_for_a_bad_url_is_a_clear_error(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vllm-wait", "--url", url, "--timeout", "1"]) == 2
    assert "http(s) URL" in capsys.readouterr().err


@pytest.mark.parametrize("body", [b"[]", b'{"data": null}', b'{"data": [1]}', b'{"data": "x"}'])
def test_a_server_that_is_not_an_openai_one_is_not_ready(
    body: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    with serving_models(models=body) as port:
        assert main(["vllm-wait", "--url", f"http://127.0.0.1:{port}/v1", "--timeout", "1.5"]) == 2
    assert "not ready after" in capsys.readouterr().err


def test_the_cpu_server_waits_through_an_odd_model_list(tmp_path: Path) -> None:
    import httpx

    launch = vllm_cpu.build_cpu_command(Path(sys.executable), tmp_path, served_model_name="m")
    server = vllm_cpu.VLLMCPUServer(launch, tmp_path / "log")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=[]))
    with httpx.Client(transport=transport) as client:
        assert server._serves_our_model(client) is False


@pytest.mark.parametrize("variable", ["VSTREAMER_API_KEY", "VSTREAMER_VLLM__API_KEY"])
def test_a_key_read_with_its_line_break_still_works(
    variable: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, "sk-test-key-123 \n")
    with serving_models(key="sk-test-key-123") as port:
        assert main(["vllm-wait", "--url", f"http://127.0.0.1:{port}/v1", "--timeout", "3"]) == 0
    assert "serves ['qwen']" in capsys.readouterr().out


@pytest.mark.parametrize(
    "overrides",
    [{"api_key": "sk-a\nb"}, {"vllm": {"api_key": "sk-a b"}}, {"embeddings_api_key": "sk-\x00x"}],
)
def test_keys_that_cannot_be_a_header_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="api_key.*visible ASCII"):
        Settings.load(**overrides)


def test_keys_are_trimmed_for_everyone() -> None:
    settings = Settings.load(api_key=" sk-1\n", vllm={"api_key": "sk-2\r\n"}, embeddings_api_key="\tsk-3")
    assert settings.api_key.get_secret_value() == "sk-1"
    assert settings.vllm.api_key is not None and settings.vllm.api_key.get_secret_value() == "sk-2"
    assert settings.embeddings_api_key.get_secret_value() == "sk-3"


# --- ports and lengths are checked before anything starts ------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "setting"),
    [(["--port", "70000"], "port"), (["--port", "0"], "port"), (["--max-model-len", "100"], "max_model_len")],
)
@pytest.mark.parametrize("command", ["vllm-serve", "vllm-command"])
def test_the_cpu_profile_checks_its_port_and_length_first(
    command: str,
    flags: list[str],
    setting: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_build(**_: object) -> Path:
        raise AssertionError("the vLLM environment was built for a launch that cannot work")

    monkeypatch.setattr(vllm_cpu, "ensure_venv", no_build)
    assert main([command, "--cpu", *flags]) == 2
    assert setting in capsys.readouterr().err


def test_port_zero_is_refused_not_ignored(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:  # where the gateway went when --port 0 was ignored: fail, not serve there
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setenv("VSTREAMER_GATEWAY_PORT", str(busy.getsockname()[1]))
        assert main(["serve", "--backend", "fake", "--port", "0"]) == 2
    assert "gateway_port" in capsys.readouterr().err
    assert main(["vllm-command", "--port", "0"]) == 2
    assert "port" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="port"):
        UIOptions.from_settings(Settings.load(data_dir=data_dir), port=0)


# --- settings ----------------------------------------------------------------------------------------------------


def test_an_audit_log_that_cannot_be_written_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="audit_log"):
        Settings.load(audit_log=tmp_path / "a-file" / "logs" / "audit.jsonl")  # no folder can be made there
    with pytest.raises(ConfigError, match="audit_log"):
        Settings.load(audit_log=tmp_path)  # a folder
    assert Settings.load(audit_log=tmp_path / "audit.jsonl").audit_log == tmp_path / "audit.jsonl"


async def test_an_audit_log_in_a_folder_still_to_be_made_is_written(tmp_path: Path) -> None:
    # The usual place is under data_dir, which does not exist before the first start (the store makes it).
    path = tmp_path / "data" / "logs" / "audit.jsonl"
    settings = Settings.load(data_dir=tmp_path / "data", audit_log=path, backend="fake")
    runtime = await open_runtime(settings)
    try:
        assert runtime.engine.safety is not None
        runtime.engine.safety.prepare_user_text("我要杀了你", source="web")
    finally:
        await runtime.aclose()
    assert path.is_file() and path.read_text(encoding="utf-8")


def test_a_home_folder_of_nobody_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no home folder"):
        Settings.load(data_dir="~nosuchuser-vstreamer/vs")


def test_a_bad_audit_log_stops_the_chat_before_it_starts(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "a-file").write_text("")
    monkeypatch.setenv("VSTREAMER_AUDIT_LOG", str(data_dir / "a-file" / "a.log"))
    assert main(["chat", "--backend", "fake"]) == 2
    assert "audit_log" in capsys.readouterr().err


def test_home_in_path_settings_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "lex").mkdir()
    settings = Settings.load(data_dir="~/vs", audit_log="~/audit.jsonl", lexicon_dirs=["~/lex"])
    assert settings.data_dir == tmp_path / "vs"
    assert settings.audit_log == tmp_path / "audit.jsonl"
    assert settings.lexicon_dirs == [tmp_path / "lex"]


def test_an_empty_config_variable_means_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSTREAMER_CONFIG", "")
    assert Settings.load().backend == "local"


# --- missing extras ------------------------------------------------------------------------------------------------

_HIDING = """
import importlib.abc, sys
hidden = sys.argv[1]
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == hidden or name.startswith(hidden + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
from tests.cli.test_vllm import serving_models
from vstreamer.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("hidden", "command", "extra"),
    [("fastapi", "serve", "server"), ("uvicorn", "serve", "server"), ("prometheus_client", "serve", "server"),
     ("chainlit", "ui", "ui"), ("nest_asyncio", "ui", "ui")],
)  # fmt: skip
def test_a_command_without_its_extra_names_the_extra(
    hidden: str, command: str, extra: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _HIDING, hidden, command, "--backend", "fake", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
        env=os.environ | {"VSTREAMER_DATA_DIR": str(tmp_path / "data")},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"vstreamer[{extra}]" in result.stderr and "Traceback" not in result.stderr


def test_a_postgresql_url_without_the_postgres_extra_names_the_extra(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The driver is imported where the database is opened: without it serve, ui, chat and keys died of a
    ModuleNotFoundError traceback that did not say what to install."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # an import of it fails, as when it is not installed
    monkeypatch.setenv("VSTREAMER_DATABASE_URL", "postgresql://vs:SECRETpw@127.0.0.1:1/vs")
    for command in (["keys", "list"], ["chat", "--backend", "fake"],
                    ["serve", "--backend", "fake", "--port", str(free_port())]):  # fmt: skip
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "postgres extra" in err and "vstreamer[postgres]" in err and "SECRET" not in err, err
    assert main(["personas", "list"]) == 0  # the files' personas, as while the database is down
    out, err = capsys.readouterr()
    assert "xiaoxing" in out and "vstreamer[postgres]" in err


def test_the_web_ui_refuses_a_persona_setting_that_names_nobody(data_dir: Path) -> None:
    """It started and quietly offered the first persona (a warning logged when a page loaded), where the chat
    refuses the same setting; the list names the personas imported through the API too, as the chat's does."""
    stored_id = asyncio.run(_store_persona(data_dir, "Aria"))
    result = subprocess.run(
        [sys.executable, "-m", "vstreamer.cli", "ui", "--backend", "fake", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, env=os.environ | {"VSTREAMER_PERSONA": "bogus"},
    )  # fmt: skip
    assert result.returncode == 2 and "ready" not in result.stdout, result
    assert "no persona 'bogus'; available:" in result.stderr, result.stderr
    assert "xiaoxing" in result.stderr and stored_id in result.stderr and "Traceback" not in result.stderr


# --- personas --------------------------------------------------------------------------------------------------


async def _store_persona(data_dir: Path, name: str) -> str:
    persona = load_persona_bytes(card(name), f"{name}.json")
    store = await open_store(None, data_dir)
    try:
        await store.save_persona(
            persona.id, persona.name, persona.model_dump_json(), owner="k1", avatar_png=None
        )
    finally:
        await store.close()
    return persona.id


async def _stored_ids(data_dir: Path) -> list[str]:
    store = await open_store(None, data_dir)
    try:
        return [json.loads(data)["id"] for data, _, _ in await store.persona_rows()]
    finally:
        await store.close()


def test_personas_imported_through_the_api_are_seen_by_the_command_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    persona_id = asyncio.run(_store_persona(data_dir, "Aria"))
    assert main(["personas", "list", "--json"]) == 0
    assert persona_id in [p["id"] for p in json.loads(capsys.readouterr().out)]
    assert main(["personas", "show", "aria"]) == 0
    assert "Aria" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", _Lines("hello\n/personas\n/exit\n"))
    assert main(["chat", "--backend", "fake", "--persona", "Aria"]) == 0
    out = capsys.readouterr().out
    assert "Aria: 收到：hello" in out and f"{persona_id:<16} Aria" in out
    # a file import may not shadow it
    (data_dir.parent / "aria.json").write_bytes(card("Aria", "another"))
    assert main(["personas", "import", str(data_dir.parent / "aria.json")]) == 2
    assert "imported through the API" in capsys.readouterr().err
    assert main(["personas", "delete", "Aria"]) == 0
    assert persona_id in capsys.readouterr().out
    assert asyncio.run(_stored_ids(data_dir)) == []


def test_listing_personas_on_a_new_install_makes_no_database(data_dir: Path) -> None:
    assert main(["personas", "list"]) == 0
    assert not (data_dir / "vstreamer.db").exists()


class _Lines:
    """Piped standard input."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines(keepends=True)

    def isatty(self) -> bool:
        return False

    def readline(self) -> str:
        return self.lines.pop(0) if self.lines else ""


def test_a_damaged_persona_can_be_deleted(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    persona = PersonaLibrary(data_dir / "personas").import_bytes(card("Seraphina"), "seraphina.json")
    (data_dir / "personas" / persona.id / "persona.json").write_text("{")
    assert main(["personas", "delete", persona.id]) == 0
    assert not (data_dir / "personas" / persona.id).exists()
    assert f"deleted {persona.id}" in capsys.readouterr().out


def test_an_import_over_an_existing_persona_names_the_flag(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "aria.json").write_bytes(card("Aria"))
    assert main(["personas", "import", str(tmp_path / "aria.json")]) == 0
    assert main(["personas", "import", str(tmp_path / "aria.json")]) == 2
    err = capsys.readouterr().err  # it said "(replace=True from Python)" to a command's user too
    assert "--replace" in err and "Python" not in err
    assert main(["personas", "import", "--replace", str(tmp_path / "aria.json")]) == 0


def test_personas_are_listed_while_the_database_is_down(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("VSTREAMER_DATABASE_URL", f"postgresql+asyncpg://vs:pw@127.0.0.1:{port}/vs")
    assert main(["personas", "list"]) == 0
    out, err = capsys.readouterr()
    assert "xiaoxing" in out and "nova" in out  # the files' personas
    assert "left out" in err and "pw@" not in err


def test_listing_personas_does_not_make_a_sqlite_file_named_in_the_settings(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "not-yet.db"
    monkeypatch.setenv("VSTREAMER_DATABASE_URL", f"sqlite+aiosqlite:///{database}")
    assert main(["personas", "list"]) == 0
    assert "xiaoxing" in capsys.readouterr().out
    assert not database.exists()
