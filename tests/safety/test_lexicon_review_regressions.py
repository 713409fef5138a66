"""Regressions from a review: pinyin false positives and misses, external checker failures, bad lexicons."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vstreamer.errors import ConfigError
from vstreamer.safety import LLMJudgeChecker, MemoryAuditLog, OpenAIModerationChecker, SafetyPipeline
from vstreamer.safety.cli import run_moderate
from vstreamer.safety.lexicon import load_lexicon
from vstreamer.safety.pipeline import SharedLexicon

ROOT = Path(__file__).resolve().parents[2]

# -- pinyin: ordinary words are no drug homophones -------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "我们学校气氛好",  # 校气 (xiào qì, 笑气) straddles 学校|气氛
        "东邪西毒欧阳锋",  # 西毒 (xī dú, 吸毒) inside a name
        "精读和泛读",  # 泛读 (fàn dú, 贩毒) is a word
        "这个压片糖果好吃",  # 压片 (yā piàn, 鸦片) is a word
        "xiaoqi加油",  # one toneless Latin word: a name as often as 笑气
        "zhidu",
        "magu",
        "dupin",
        "Xiaoqi is my friend",
        "xiao气氛很好",  # the Han half of a mixed spelling is part of a word
    ],
)
def test_ordinary_words_are_no_pinyin_hits(pipeline: SafetyPipeline, text: str) -> None:
    r = pipeline.moderate(text, direction="input")
    assert r.action == "pass", r.reason
    assert not [m for m in r.matches if m.rule.startswith("pinyin:")]


@pytest.mark.parametrize(
    "text",
    [
        "哪里买bing du",
        "哪里买兵毒",
        "哪里有兵毒",
        "我想吸读",  # 想吸 is a rare word of the dictionary
        "我想买bing du",
        "BingDu",
        "b.i.n.g.d.u",
        "hai luo yin",
        "hailuoyin",
    ],
)
def test_obvious_evasions_are_still_blocked(pipeline: SafetyPipeline, text: str) -> None:
    r = pipeline.moderate(text, direction="input")
    assert r.action == "block", r.reason


# -- pinyin: Han mixed with Latin pinyin ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "span", "term"),
    [
        ("哪里买冰du", (3, 6), "冰毒"),
        ("哪里买bing毒", (3, 8), "冰毒"),
        ("有没有hai洛因", (3, 8), "海洛因"),
        ("卖du品", (1, 4), "毒品"),
        ("冰 du", (0, 4), "冰毒"),
        ("BING毒", (0, 5), "冰毒"),
        ("来点鸦pian", (2, 7), "鸦片"),  # the Latin part is the last syllable
    ],
)
def test_han_mixed_with_latin_pinyin_is_blocked(
    pipeline: SafetyPipeline, text: str, span: tuple[int, int], term: str
) -> None:
    r = pipeline.moderate(text, direction="input")
    assert r.action == "block", r.reason
    assert [(m.start, m.end, m.term) for m in r.matches if m.rule.startswith("pinyin:")] == [(*span, term)]


@pytest.mark.parametrize("text", ["冰dux", "xbing毒", "冰d u", "病du", "bin g毒"])
def test_mixed_near_misses_pass(pipeline: SafetyPipeline, text: str) -> None:
    r = pipeline.moderate(text, direction="input")
    assert not [m for m in r.matches if m.rule.startswith("pinyin:")], r.reason


def test_mixed_pinyin_at_the_end_of_a_partial_stream_waits(pipeline: SafetyPipeline) -> None:
    assert not pipeline.compiled.scan("哪里买冰du", at_end=False)
    assert pipeline.compiled.scan("哪里买冰du ", at_end=False)


# -- external checkers ---------------------------------------------------------------------------


class _Server:
    """A small HTTP/1.1 server on 127.0.0.1 whose reply each test sets."""

    def __init__(self) -> None:
        self.body: object = {}
        self.drip: float = 0.0
        self.status = 200
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.url = ""
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await self._reply(reader, writer)
        except ConnectionError:
            pass  # the client gave up (its deadline)
        finally:
            writer.close()

    async def _reply(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
        await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((head[0], headers))
        data = json.dumps(self.body).encode()
        writer.write(
            f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        for i in range(0, len(data), 8 if self.drip else len(data) or 1):
            if reader.at_eof():
                return  # the client closed the connection
            writer.write(data[i : i + 8] if self.drip else data)
            await writer.drain()
            await asyncio.sleep(self.drip)


@pytest.fixture
async def http_server() -> AsyncIterator[_Server]:
    state = _Server()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    yield state
    server.close()
    await asyncio.gather(*state.handlers)
    await server.wait_closed()


@pytest.mark.parametrize("fail_open", [True, False])
async def test_timeout_is_a_deadline_for_the_whole_request(http_server: _Server, fail_open: bool) -> None:
    http_server.body = {"results": [{"flagged": False, "categories": {}}]}
    http_server.drip = 0.2  # every read is quicker than the timeout, the whole reply is not
    checker = OpenAIModerationChecker(http_server.url, timeout=0.5, fail_open=fail_open)
    started = time.monotonic()
    verdict = await checker.check("hi", direction="input")
    assert time.monotonic() - started < 1.5
    assert verdict.error is not None and verdict.flagged is not fail_open


@pytest.mark.parametrize(
    "body",
    [
        {"results": [["x"]]},
        {"results": [{"flagged": True, "categories": ["violence"]}]},
        {"results": "x"},
        ["x"],
        None,
    ],
)
@pytest.mark.parametrize("fail_open", [True, False])
async def test_moderations_reply_of_an_odd_shape_is_a_failure(
    http_server: _Server, body: object, fail_open: bool
) -> None:
    http_server.body = body
    verdict = await OpenAIModerationChecker(http_server.url, fail_open=fail_open).check(
        "hi", direction="input"
    )
    assert verdict.error is not None and verdict.flagged is not fail_open


@pytest.mark.parametrize(
    "body",
    [{"choices": [{"message": "x"}]}, {"choices": [{"message": {"content": 5}}]}, {"choices": {}}, [1]],
)
async def test_judge_reply_of_an_odd_shape_is_a_failure(http_server: _Server, body: object) -> None:
    http_server.body = body
    verdict = await LLMJudgeChecker(http_server.url, fail_open=False).check("hi", direction="input")
    assert verdict.error is not None and verdict.flagged


async def test_pipeline_survives_an_odd_reply(http_server: _Server) -> None:
    http_server.body = {"results": [{"flagged": True, "categories": ["violence"]}]}
    checker = OpenAIModerationChecker(http_server.url, fail_open=False)
    pipeline = SafetyPipeline.default(audit=MemoryAuditLog(), external=checker)
    assert (await pipeline.amoderate("hello", direction="input")).action == "block"


@pytest.mark.parametrize(
    ("answer", "flagged", "categories"),
    [
        ("UNSAFE.", True, ()),
        ("**UNSAFE**: violence", True, ("violence",)),
        ("UNSAFE - violence", True, ("violence",)),
        ("Verdict: UNSAFE: hate, spam", True, ("hate", "spam")),
        ("SAFE.", False, ()),
        ("**SAFE**", False, ()),
        ("UNSAFE: violence", True, ("violence",)),
    ],
)
async def test_judge_verdict_with_punctuation(
    http_server: _Server, answer: str, flagged: bool, categories: tuple[str, ...]
) -> None:
    http_server.body = {"choices": [{"message": {"content": answer}}]}
    verdict = await LLMJudgeChecker(http_server.url).check("some text", direction="input")
    assert verdict.error is None
    assert (verdict.flagged, verdict.categories) == (flagged, categories)


async def test_credentials_in_the_url_go_in_a_header_and_never_in_logs(
    http_server: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    http_server.status = 401
    url = http_server.url.replace("http://", "http://judge:s3cret-pass@")
    with caplog.at_level(logging.WARNING, logger="vstreamer"):
        verdict = await LLMJudgeChecker(url).check("x", direction="input")
    assert verdict.error is not None and "s3cret" not in verdict.error
    assert "s3cret" not in caplog.text and "401" in caplog.text
    line, headers = http_server.requests[-1]
    assert line.startswith("POST /v1/chat/completions")
    assert headers["authorization"] == "Basic " + base64.b64encode(b"judge:s3cret-pass").decode()


def test_credentials_in_the_url_and_an_api_key_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="credentials"):
        LLMJudgeChecker("http://judge:pw@127.0.0.1:9/v1", api_key="sk-test")


# -- bad custom lexicons -------------------------------------------------------------------------


def _folder(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    folder = tmp_path / "lex"
    folder.mkdir()
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content, encoding="utf-8")
    return folder


def test_invalid_pattern_is_a_config_error(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"categories.toml": '[[patterns]]\ncategory = "x"\npattern = "(unclosed"\n'})
    with pytest.raises(ConfigError, match=r"categories\.toml.*\(unclosed"):
        SharedLexicon([folder], include_default=False)


def test_non_utf8_config_is_a_config_error(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"categories.toml": '[categories.x]\nlabel = "坏"\n'.encode("gbk")})
    with pytest.raises(ConfigError, match=r"categories\.toml.*UTF-8"):
        load_lexicon([folder], include_default=False)


def test_gbk_term_file_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"x.txt": "fine\n坏蛋词\n".encode("gbk")})
    with pytest.raises(ConfigError, match=r"x\.txt.*line 2.*UTF-8"):
        load_lexicon([folder], include_default=False)


def test_cli_reports_a_bad_pattern_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _folder(tmp_path, {"categories.toml": '[[patterns]]\ncategory = "x"\npattern = "(unclosed"\n'})
    assert run_moderate(["--lexicon", str(folder)], io.StringIO("hi\n"), io.StringIO()) == 2
    assert "error:" in capsys.readouterr().err


def test_cli_module_survives_invalid_utf8_on_stdin() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "vstreamer.safety.cli"],
        input=b"ok line\n\xff\xfe bad\n" + "last 傻逼\n".encode(),
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    rows = [json.loads(x) for x in proc.stdout.decode("utf-8").splitlines()]
    assert [r["action"] for r in rows] == ["pass", "pass", "mask"]
    assert rows[1]["text"] == "\ufffd\ufffd bad"
