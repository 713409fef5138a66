"""The web UI's pieces without a browser: emotion filter, options, texts, auth, and the store-backed data layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vstreamer.config import Settings
from vstreamer.engine import Conversation, Turn
from vstreamer.errors import BackendTimeout, BackendUnavailable, ConfigError, ContextBudgetError
from vstreamer.persona import PersonaLibrary
from vstreamer.ui import texts
from vstreamer.ui.auth import check_password, ensure_jwt_secret
from vstreamer.ui.emotion import EmotionFilter, strip_emotions
from vstreamer.ui.options import UIOptions

XIAOXING = PersonaLibrary(None).get("xiaoxing")
NOVA = PersonaLibrary(None).get("nova")


def test_emotion_tags_split_across_pieces_never_show() -> None:
    emotion_filter = EmotionFilter()
    shown = [emotion_filter.feed(p) for p in ["你好[jo", "y]呀 <emo", "tion=sad>嗯 [link] a<b"]]
    shown.append(emotion_filter.flush())
    assert "".join(shown) == "你好呀 嗯 [link] a<b"
    assert emotion_filter.emotions == ["joy", "sad"]
    assert not any("[jo" in s or "<emo" in s for s in shown)


def test_unknown_bracket_words_stay() -> None:
    assert strip_emotions("see [docs] and <b>") == ("see [docs] and <b>", [])
    assert strip_emotions('ok <emotion:"angry"/>') == ("ok ", ["angry"])


@pytest.mark.parametrize(
    "pieces",
    [
        ['<emotion="happy"', ">你好"],
        ["<emotion=happy /", ">你好"],
        ["<emotion=happy/", ">你好"],
        ["<emotion=happy ", "/>你好"],
        ['<emotion = "happy" ', "/", ">你好"],
    ],
)
def test_a_split_tag_with_quotes_spaces_or_slash_never_shows(pieces: list[str]) -> None:
    emotion_filter = EmotionFilter()
    shown = [emotion_filter.feed(p) for p in pieces] + [emotion_filter.flush()]
    assert shown[-2:] == ["你好", ""] and "".join(shown) == "你好"
    assert emotion_filter.emotions == ["happy"]


_TAG_PART = st.sampled_from(["", " "])
_TAGS = st.one_of(
    st.builds("[{}]".format, st.sampled_from(["joy", "sad", "link"])),
    st.builds(
        "<emotion{}{}{}{}{}{}{}{}>".format,
        _TAG_PART, st.sampled_from(["=", ":"]), _TAG_PART, st.sampled_from(["", '"']),
        st.sampled_from(["happy", "angry", "nope"]), st.sampled_from(["", '"']), _TAG_PART, st.sampled_from(["", "/"]),
    ),
)  # fmt: skip


@given(st.lists(st.one_of(_TAGS, st.text("ab <[", max_size=4)), max_size=6), st.data())
def test_tags_split_anywhere_read_as_the_whole_text(parts: list[str], data: st.DataObject) -> None:
    text = "".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    emotion_filter = EmotionFilter()
    out = "".join(emotion_filter.feed(p) for p in pieces) + emotion_filter.flush()
    assert (out, emotion_filter.emotions) == strip_emotions(text)


@given(st.lists(st.text(max_size=12), max_size=8))
def test_filter_loses_no_text_without_tags(pieces: list[str]) -> None:
    emotion_filter = EmotionFilter()
    out = "".join(emotion_filter.feed(p) for p in pieces) + emotion_filter.flush()
    assert out == strip_emotions("".join(pieces))[0]


def test_options_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VSTREAMER_UI_AUTH", "password")
    monkeypatch.setenv("VSTREAMER_UI_USERS", json.dumps({"alice": "pw"}))
    options = UIOptions.from_settings(Settings.load(data_dir=tmp_path), port=9123)
    assert (options.auth, options.users, options.port, options.host) == (
        "password",
        {"alice": "pw"},
        9123,
        "127.0.0.1",
    )
    assert "pw" not in repr(options)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VSTREAMER_UI_AUTH": "password"}, "no ui_users"),
        ({"VSTREAMER_UI_AUTH": "oauth"}, "ui_auth"),
        ({"VSTREAMER_UI_USERS": "alice:pw"}, "ui_users"),
        ({"VSTREAMER_UI_HOST": "0.0.0.0"}, "without login only binds to 127.0.0.1"),
    ],
)
def test_bad_options_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        UIOptions.from_settings(Settings.load(data_dir=tmp_path))


def test_ui_port_never_the_vllm_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="collides"):
        UIOptions.from_settings(Settings.load(data_dir=tmp_path), port=8000)


def test_password_check() -> None:
    options = UIOptions(auth="password", users={"alice": "s3cret"})
    assert check_password(options, "alice", "s3cret") == "alice"
    assert check_password(options, "alice", "wrong") is None
    assert check_password(options, "mallory", "s3cret") is None


def test_jwt_secret_is_kept_private_and_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAINLIT_AUTH_SECRET", raising=False)
    first = ensure_jwt_secret(tmp_path)
    assert ensure_jwt_secret(tmp_path) == first and len(first) > 40
    assert (tmp_path / "auth_secret").stat().st_mode & 0o077 == 0


def test_errors_read_friendly_in_the_personas_language() -> None:
    assert "连不上" in texts.error_text(XIAOXING, BackendUnavailable("connection refused at 127.0.0.1"))
    assert "timed out" in texts.error_text(NOVA, BackendTimeout("first token"))
    assert "too long" in texts.error_text(NOVA, ContextBudgetError("x"))
    assert "127.0.0.1" not in texts.error_text(
        XIAOXING, BackendUnavailable("connection refused at 127.0.0.1")
    )


def test_shown_reply_marks_interruptions_and_badges() -> None:
    assert texts.shown_reply(XIAOXING, "你好", "interrupted", []) == "你好 …（已中断）"
    assert texts.shown_reply(NOVA, "Hi", "complete", ["joy"]) == "😊 Hi"
    assert "problem" in texts.shown_reply(NOVA, "", "failed", [])


# --- the data layer over a real store (SQLite in a temp folder) -------------------------------------------


@pytest.fixture
async def layer(tmp_path: Path):  # type: ignore[no-untyped-def]
    pytest.importorskip("chainlit", reason="the web UI needs Chainlit")
    from chainlit.types import Pagination, ThreadFilter

    from vstreamer.store import open_store
    from vstreamer.ui.datalayer import StoreDataLayer

    store = await open_store(None, tmp_path)
    library = PersonaLibrary(None)

    def describe(persona_id: str) -> tuple[str, str]:
        return library.get(persona_id).name, persona_id

    data_layer = StoreDataLayer(lambda: store, describe, decorate=lambda t, p: t.content)
    yield data_layer, store, Pagination, ThreadFilter
    await store.close()


async def _conversation(store, owner: str, text: str) -> str:  # type: ignore[no-untyped-def]
    record = await store.create_session("xiaoxing", owner=owner, title=text)
    conversation = Conversation("xiaoxing", id=record.id)
    for turn in (
        Turn("assistant", "嗨！"),
        Turn("user", text),
        Turn("assistant", "[joy]收到", status="interrupted"),
    ):
        conversation.turns.append(turn)
        await store.save_turn(conversation, turn)
    return str(record.id)


async def test_threads_are_the_owners_sessions_only(layer) -> None:  # type: ignore[no-untyped-def]
    data_layer, store, pagination, thread_filter = layer
    alice = await _conversation(store, "alice", "爱丽丝的秘密")
    bob = await _conversation(store, "bob", "鲍勃的问题")

    page = await data_layer.list_threads(pagination(first=10), thread_filter(userId="alice"))
    assert [t["id"] for t in page.data] == [alice]
    assert (await data_layer.list_threads(pagination(first=10), thread_filter())).data == []
    assert await data_layer.get_thread_author(alice) == "alice"
    assert await data_layer.get_thread_author("nope") == ""
    user = await data_layer.get_user("bob")
    assert user is not None and user.id == "bob"

    thread = await data_layer.get_thread(bob)
    assert thread is not None and thread["userIdentifier"] == "bob"
    assert [s["type"] for s in thread["steps"]] == ["assistant_message", "user_message", "assistant_message"]
    assert thread["steps"][2]["metadata"] == {"status": "interrupted", "emotions": ["joy"]}
    assert thread["metadata"]["chat_profile"] == "xiaoxing"


async def test_paging_search_rename_delete(layer) -> None:  # type: ignore[no-untyped-def]
    data_layer, store, pagination, thread_filter = layer
    ids = [await _conversation(store, "alice", f"话题{i}") for i in range(3)]
    first = await data_layer.list_threads(pagination(first=2), thread_filter(userId="alice"))
    assert first.pageInfo.hasNextPage and len(first.data) == 2
    rest = await data_layer.list_threads(
        pagination(first=2, cursor=first.pageInfo.endCursor), thread_filter(userId="alice")
    )
    assert {t["id"] for t in first.data + rest.data} == set(ids)
    found = await data_layer.list_threads(pagination(first=10), thread_filter(userId="alice", search="话题1"))
    assert [t["id"] for t in found.data] == [ids[1]]

    await data_layer.update_thread(ids[0], name="新名字")
    assert (await store.get_session(ids[0])).title == "新名字"
    await data_layer.delete_thread(ids[0])
    assert await store.get_session(ids[0]) is None


async def test_search_looks_past_the_page_at_hand(layer) -> None:  # type: ignore[no-untyped-def]
    """A thread older than the first page is found (the search filtered only the page it had read)."""
    data_layer, store, pagination, thread_filter = layer
    wanted = await _conversation(store, "alice", "Pizza talk")
    for i in range(5):
        await _conversation(store, "alice", f"other {i}")
    await _conversation(store, "alice", "100%_literal")
    found = await data_layer.list_threads(pagination(first=2), thread_filter(userId="alice", search="pIZZA"))
    assert [t["id"] for t in found.data] == [wanted] and not found.pageInfo.hasNextPage
    literal = await data_layer.list_threads(pagination(first=10), thread_filter(userId="alice", search="%_"))
    assert [t["name"] for t in literal.data] == ["100%_literal"]  # % and _ are searched as themselves


async def test_a_long_thread_resumes_with_its_newest_turns(layer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Past the shown number of turns, a resumed thread showed its oldest ones and ended far from where it stopped."""
    data_layer, store, _, _ = layer
    monkeypatch.setattr("vstreamer.ui.datalayer.THREAD_TURNS", 4)
    record = await store.create_session("xiaoxing", owner="alice", title="long")
    conversation = Conversation("xiaoxing", id=record.id)
    for i in range(7):
        turn = conversation.add(Turn("user" if i % 2 else "assistant", f"msg {i}"))
        await store.save_turn(conversation, turn)
    thread = await data_layer.get_thread(record.id)
    assert [s["output"] for s in thread["steps"]] == ["msg 3", "msg 4", "msg 5", "msg 6"]


async def test_threads_are_dated_by_their_last_use(layer) -> None:  # type: ignore[no-untyped-def]
    """The sidebar sorts and groups ("Today", "Previous 7 days") the threads it loaded by their ``createdAt``: an old
    chat continued today must sort first and sit under today, as the server's page (last used first) has it."""
    data_layer, store, pagination, thread_filter = layer
    old = await _conversation(store, "alice", "老话题")
    new = await _conversation(store, "alice", "新话题")
    conversation = await store.load_conversation(old)
    for turn in (Turn("user", "接着聊"), Turn("assistant", "好呀")):  # the old chat is continued last
        conversation.add(turn)
        await store.save_turn(conversation, turn)
    page = await data_layer.list_threads(pagination(first=10), thread_filter(userId="alice"))
    assert [t["id"] for t in page.data] == [old, new]
    dates = [t["createdAt"] for t in page.data]
    assert dates == sorted(dates, reverse=True)  # what the sidebar re-sorts them by agrees with the page
    record = await store.get_session(old)
    from vstreamer.ui.datalayer import iso

    assert record is not None and page.data[0]["createdAt"] == iso(record.updated_at)
