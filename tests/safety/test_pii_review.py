"""Review regressions: ID numbers written in groups, phone numbers with dots, brackets, area or country codes;
ordinary numbers of chat that must stay unmasked; the cost of long runs of digits and separators."""

from __future__ import annotations

import time

import pytest

from vstreamer.safety import MemoryAuditLog, SafetyPipeline
from vstreamer.safety.pii import _ID_CHECK, _ID_WEIGHTS, cn_id_valid, find_pii


def _cn_id(body: str) -> str:
    return body + _ID_CHECK[sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS, strict=True)) % 11]


ID = _cn_id("11010520010520123")  # 110105200105201239
ID_X = "11010519491231002X"


def _found(text: str) -> list[tuple[str, str]]:
    return [(m.term, text[m.start : m.end]) for m in find_pii(text)]


@pytest.mark.parametrize(
    "number",
    [
        f"{ID[:6]} {ID[6:14]} {ID[14:]}",
        f"{ID[:6]}-{ID[6:14]}-{ID[14:]}",
        f"{ID[:6]} {ID[6:10]} {ID[10:14]} {ID[14:]}",
        f"{ID[:6]}-{ID[6:10]}-{ID[10:14]}-{ID[14:]}",
        f"{ID_X[:6]} {ID_X[6:14]} {ID_X[14:]}",
        f"{ID_X[:6]}-{ID_X[6:14]}-{ID_X[14:].lower()}",
    ],
)
def test_grouped_id_number_is_one_cn_id(number: str) -> None:
    text = f"身份证 {number} 谢谢"
    assert _found(text) == [("cn_id", number)]


def test_grouped_id_number_full_width() -> None:
    number = "１１０１０５　２００１０５２０　１２３９"
    text = f"身份证{number}。"
    assert _found(text) == [("cn_id", number)]


def test_grouped_id_number_checksum_still_checked() -> None:
    bad = f"{ID[:6]} {ID[6:14]} {ID[14:17]}{(int(ID[17]) + 1) % 10}"
    assert all(term != "cn_id" for term, _ in _found(bad))
    assert cn_id_valid(f"{ID[:6]} {ID[6:14]} {ID[14:]}")
    assert cn_id_valid(f"{ID_X[:6]}-{ID_X[6:14]}-{ID_X[14:]}")


def test_grouped_id_number_masked_in_pipeline() -> None:
    p = SafetyPipeline.default(audit=MemoryAuditLog())
    out = p.prepare_user_text(f"身份证 {ID[:6]} {ID[6:14]} {ID[14:]}", source="web").text_for_prompt
    assert not any(c.isdigit() for c in out), out


@pytest.mark.parametrize(
    "number",
    [
        "138.0013.8000",
        "+86 (138) 0013-8000",
        "+86 138.0013.8000",
        "(138) 0013 8000",
        "138 0013 8000",
        "(+86) 138 0013 8000",
        "0086 13800138000",
        "1 3 8 0 0 1 3 8 0 0 0",
    ],
)
def test_mobile_formats(number: str) -> None:
    assert _found(f"电话 {number} 哦") == [("phone", number)]


@pytest.mark.parametrize(
    "number",
    ["010-62345678", "(010) 6234 5678", "(010)62345678", "021-6234567", "0755-2345 6789", "0571.8765.4321"],
)
def test_landline_formats(number: str) -> None:
    assert _found(f"座机 {number} 哦") == [("phone", number)]


@pytest.mark.parametrize(
    "number",
    ["+1 415 555 2671", "+44 20 7946 0958", "+1 (415) 555-2671", "+33 1 23 45 67 89", "+81-3-1234-5678"],
)
def test_international_formats(number: str) -> None:
    assert _found(f"call {number} now") == [("phone", number)]


@pytest.mark.parametrize(
    "text",
    [
        "666",
        "520",
        "1314520",
        "20:00",
        "13.8",
        "2024-05-20",
        "2024.05.20",
        "2024052012345678",
        "¥1380.00",
        "3.14159",
        "1.2.3",
        "2024-05-20 20:00",
        "uid 12345678",
        "110105200105201230",  # fails the ID checksum
        "价格 13800 元, 2024-05-20 20:00, 666, 520, 1314520",
        "直播 20:00 开始, 价格 13.8 元, 666, 520",
        "价格 13.8 2024-05-20 20:00",
        "+1 2024-05-20 20:00",
        "+1 666 520",
        "+1 520 1314",
        "+1 13.8 元",
        "版本 1.2.3.4.5.6.7.8.9.10",
        "3.14159265358979",
        "2024.05.20 2024.05.21",
        "1-3 2024-05-20",
        "第 1 3 5 7 9 题",
        "¥1380.00 ¥1380.00 ¥1380.00",
    ],
)
def test_ordinary_numbers_are_not_personal_data(text: str) -> None:
    assert find_pii(text) == []


@pytest.mark.parametrize("unit", ["1 ", "1-", "1.", "(1) ", "1 2.", "+1 ", "0", "12-", "8 (", "1)"])
def test_long_digit_runs_stay_linear(unit: str) -> None:
    """The work is the regex engine's, which Python cannot count: it is measured in this thread's CPU time, which
    other jobs and threads do not add to (wall-clock time does), on a text long enough that the gap is wide both
    ways: ~15 ms linear; a detector that backtracks over the whole run from each digit (quadratic) takes ~20 s."""
    text = (unit * 40_000)[:40_000]
    start = time.thread_time()
    find_pii(text)
    assert time.thread_time() - start < 1.0
