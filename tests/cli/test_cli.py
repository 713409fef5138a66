"""The ``vstreamer`` command as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from vstreamer.cli import main
from vstreamer.engine import Turn
from vstreamer.store import SessionRecord, open_store


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vstreamer.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        env=os.environ | (env or {}),
    )


@pytest.fixture
def data_env(tmp_path: Path) -> dict[str, str]:
    return {"VSTREAMER_DATA_DIR": str(tmp_path / "data")}


def test_personas_list_and_show(data_env: dict[str, str]) -> None:
    listing = run_cli("personas", "list", "--json", env=data_env)
    assert listing.returncode == 0, listing.stderr
    ids = [p["id"] for p in json.loads(listing.stdout)]
    assert "xiaoxing" in ids and "nova" in ids
    show = run_cli("personas", "show", "xiaoxing", env=data_env)
    assert show.returncode == 0 and "小星" in show.stdout
    missing = run_cli("personas", "show", "nobody", env=data_env)
    assert missing.returncode == 2 and "xiaoxing" in missing.stderr


def test_import_real_card_then_delete(data_env: dict[str, str], shared_data: Path, tmp_path: Path) -> None:
    card = tmp_path / "seraphina.png"
    shutil.copy(shared_data / "cards" / "seraphina.png", card)
    imported = run_cli("personas", "import", str(card), env=data_env)
    assert imported.returncode == 0, imported.stderr
    assert "Seraphina" in run_cli("personas", "list", env=data_env).stdout
    again = run_cli("personas", "import", str(card), env=data_env)
    assert again.returncode == 2  # id collision without --replace
    assert run_cli("personas", "delete", "seraphina", env=data_env).returncode == 0
    assert "Seraphina" not in run_cli("personas", "list", env=data_env).stdout


def test_import_hostile_file_is_a_clear_error(data_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\xff" * 64)
    result = run_cli("personas", "import", str(bad), env=data_env)
    assert result.returncode == 2
    assert "error" in result.stderr and "Traceback" not in result.stderr


def test_vllm_command_and_port_collision(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vllm-command", "--tensor-parallel-size", "2", "--quantization", "gptq"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("vllm serve Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4 ")
    assert "--tensor-parallel-size 2" in out and "--port 8000" in out
    assert main(["vllm-command", "--port", "8310"]) == 2
    assert "collides" in capsys.readouterr().err


def test_bad_config_is_reported_without_traceback(data_env: dict[str, str]) -> None:
    result = run_cli("chat", "--backend", "openai", "--base-url", "ftp://x", env=data_env)
    assert result.returncode == 2
    assert "base_url" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("chat", "--context-window", "300", "--max-tokens", "290", env=data_env)
    assert result.returncode == 2 and "context_window" in result.stderr


def test_chat_from_piped_input_with_commands(data_env: dict[str, str]) -> None:
    script = "hello there\n/persona nova\n/reset\nsecond message\n/exit\n"
    result = run_cli("chat", "--backend", "fake", stdin=script, env=data_env)
    assert result.returncode == 0, result.stderr
    assert "小星: 收到：hello there" in result.stdout
    assert "Nova: 收到：second message" in result.stdout
    assert "switched to Nova" in result.stdout
    # Each conversation with a message in it is stored, as the local user's (the one switched away from before
    # anything was said is not).
    saved = re.search(r"saved: (\w+), (\w+)", result.stdout)
    assert saved is not None
    stored = asyncio.run(_stored_sessions(Path(data_env["VSTREAMER_DATA_DIR"])))
    assert [(r.id, r.persona_id, r.platform, r.title) for r, _ in stored] == [
        (saved[1], "xiaoxing", "cli", "hello there"), (saved[2], "nova", "cli", "second message"),
    ]  # fmt: skip
    first, second = (turns for _, turns in stored)
    assert [(t.role, t.content) for t in first][-2:] == [
        ("user", "hello there"),
        ("assistant", "收到：hello there"),
    ]
    assert [(t.role, t.content, t.status) for t in second][-2:] == [
        ("user", "second message", "complete"), ("assistant", "收到：second message", "complete"),
    ]  # fmt: skip


async def _stored_sessions(data_dir: Path) -> list[tuple[SessionRecord, list[Turn]]]:
    store = await open_store(None, data_dir)
    try:
        records = sorted(await store.list_sessions(owner="local"), key=lambda r: r.created_at)
        return [(r, await store.list_messages(r.id)) for r in records]
    finally:
        await store.close()


def test_ctrl_c_stops_the_reply_not_the_program(data_env: dict[str, str]) -> None:
    env = (
        os.environ
        | data_env
        | {"VSTREAMER_BACKEND": "fake", "VSTREAMER_FAKE_DELAY": "0.05", "PYTHONUNBUFFERED": "1"}
    )
    # A runner started in the background (`cmd &`) ignores SIGINT, and children inherit that: give the program a
    # terminal's default, as a user's shell does.
    child = pexpect.spawn(
        sys.executable, ["-m", "vstreamer.cli", "chat"], env=env, encoding="utf-8", timeout=30,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        child.expect("观众> ")
        child.sendline(" ".join(f"word{i}" for i in range(300)))  # ~15 s of streaming at 0.05 s a piece
        child.expect("收到：word0 word1 word2 ")
        child.sendintr()
        child.expect("stopped")
        child.expect("观众> ")
        child.sendline("still alive?")
        child.expect("收到：still alive\\?")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_chat_whose_replies_fail_exits_with_an_error(data_env: dict[str, str]) -> None:
    """A script piping messages in learns from the exit status that the LLM server was not there (it exited 0)."""
    env = data_env | {"VSTREAMER_BACKEND": "openai", "VSTREAMER_BASE_URL": "http://127.0.0.1:9/v1",
                      "VSTREAMER_MODEL": "m", "VSTREAMER_CONNECT_TIMEOUT": "1", "VSTREAMER_MAX_RETRIES": "0"}  # fmt: skip
    result = run_cli("chat", stdin="hello?\n/exit\n", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error" in result.stdout


@pytest.mark.parametrize(
    ("args", "setup", "said"),
    [
        (("chat", "--backend", "fake", "--config", "{tmp}/bad.toml"), "bad-toml", "config file"),
        (("chat", "--backend", "fake", "--config", "{tmp}/latin1.toml"), "latin1-toml", "config file"),
        (("chat", "--backend", "fake", "--data-dir", "{tmp}/afile/sub"), "file", "data folder"),
        (("keys", "list", "--database-url", "postgresql://u:pw@db:notaport/vs"), "", "database URL"),
        (("serve", "--no-auth", "--port", "99999", "--backend", "fake"), "", "gateway_port"),
        (("serve", "--no-auth", "--port", "8000", "--backend", "fake"), "", "collides"),
        (("ui", "--port", "99999", "--backend", "fake"), "", "UI port"),
    ],
    ids=["broken-toml", "non-utf8-toml", "data-dir-under-a-file", "url-port-not-a-number", "port-out-of-range",
         "port-of-vllm", "ui-port-out-of-range"],
)  # fmt: skip
def test_bad_settings_and_flags_are_clear_errors(
    data_env: dict[str, str], tmp_path: Path, args: tuple[str, ...], setup: str, said: str
) -> None:
    """Every bad value, from a file or a flag, is refused with a message and status 2: no traceback, and a flag is
    checked as the same setting from the environment is (``--port 99999`` served on port 34463)."""
    (tmp_path / "bad.toml").write_text('persona = "nova\n')
    (tmp_path / "latin1.toml").write_bytes('persona = "café"\n'.encode("latin-1"))
    (tmp_path / "afile").write_text("not a folder")
    result = run_cli(*(a.format(tmp=tmp_path) for a in args), env=data_env, stdin="/exit\n")
    assert result.returncode == 2, result.stdout + result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr


def test_moderate_after_global_flags_and_ctrl_c_at_start(data_env: dict[str, str]) -> None:
    moderated = run_cli("-v", "moderate", stdin="你好\n")
    assert moderated.returncode == 0 and json.loads(moderated.stdout.splitlines()[0])["action"] == "pass"
    # Ctrl-C while the chat starts (here: waiting for a server that never answers): a word, not two tracebacks.
    silent = subprocess.Popen(
        ["sleep", "60"]
    )  # stands for nothing; the server below accepts and never answers
    server = subprocess.Popen(
        [sys.executable, "-c", "import socket,time;s=socket.socket();s.bind(('127.0.0.1',0));s.listen();"
         "print(s.getsockname()[1],flush=True);c=s.accept();print('accepted',flush=True);time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = server.stdout.readline().strip()  # type: ignore[union-attr]
        chat = subprocess.Popen(
            [sys.executable, "-m", "vstreamer.cli", "chat", "--backend", "openai", "--model", "m",
             "--base-url", f"http://127.0.0.1:{port}/v1"],
            env=os.environ | data_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a terminal's default, as
        )  # fmt: skip  # above (a runner in the background ignores SIGINT, and the chat would inherit that)
        # Ctrl-C once the chat waits for the server (its health check is connected): sent sooner, on a busy machine
        # it could land in the synchronous end of the start-up, where asyncio.Runner's cancel finds no await to stop.
        assert server.stdout.readline().strip() == "accepted"  # type: ignore[union-attr]
        chat.send_signal(signal.SIGINT)
        _, err = chat.communicate(timeout=30)
        assert chat.returncode == 130 and "cancelled" in err and "Traceback" not in err, err
    finally:
        for process in (silent, server):
            process.kill()
            process.wait()


async def test_a_first_message_with_a_lone_surrogate_still_titles_a_stored_session(tmp_path: Path) -> None:
    """Half an emoji (a browser's or a pipe's broken text) as the first message: the session is stored under a
    title the database can hold, and the message is answered (before, nothing was stored or answered)."""
    store = await open_store(None, tmp_path)
    try:
        record = await store.create_session("xiaoxing", owner="me", title="hi \ud83d there\x00")
        assert record.title == "hi \ufffd there"
        assert (await store.get_session(record.id)).title == "hi \ufffd there"  # type: ignore[union-attr]
    finally:
        await store.close()


def test_the_web_ui_fails_with_a_status_when_it_cannot_start(data_env: dict[str, str]) -> None:
    """A database that cannot be opened, a port that is taken: an error and status 2, not a "ready" server with
    no runtime behind it, nor an exit status that says all went well."""
    result = run_cli("ui", "--backend", "fake", "--port", "8391",
                     env=data_env | {"VSTREAMER_DATABASE_URL": "postgresql://u:pw@127.0.0.1:1/db"})  # fmt: skip
    assert result.returncode == 2 and "database" in result.stderr and "ready" not in result.stdout, result
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("ui", "--backend", "fake", "--port", port, env=data_env)
    assert result.returncode == 2 and port in result.stderr and "ready" not in result.stdout, result
    assert "--port or VSTREAMER_UI_PORT" in result.stderr  # how to choose another one


def test_the_gateway_on_a_busy_port_fails_before_announcing(data_env: dict[str, str]) -> None:
    """It printed "vstreamer gateway on http://…" and then failed with status 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("serve", "--no-auth", "--backend", "fake", "--port", port, env=data_env)
    assert result.returncode == 2 and port in result.stderr and "gateway on" not in result.stdout, result
    assert "--port or VSTREAMER_GATEWAY_PORT" in result.stderr  # how to choose another one


def test_a_reader_that_stops_early_ends_the_command_quietly(data_env: dict[str, str]) -> None:
    """``vstreamer personas show nova | head -5``: a BrokenPipeError traceback (and an "Exception ignored" line from
    the flush at exit) when the reader was gone before the output was all written."""
    reader = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE)
    reader.wait(timeout=30)  # gone, as `head` is once it has its lines: writing into its pipe fails
    try:
        command = subprocess.run(
            [sys.executable, "-m", "vstreamer.cli", "personas", "show", "nova"], stdout=reader.stdin,
            stderr=subprocess.PIPE, text=True, timeout=120, env=os.environ | data_env,
        )  # fmt: skip
    finally:
        reader.stdin.close()  # type: ignore[union-attr]
    assert command.returncode == 141, command.stderr  # 128 + SIGPIPE, as the shell reports for `cat`
    assert "Traceback" not in command.stderr and "Exception ignored" not in command.stderr, command.stderr
