"""The Chainlit app: a thin adapter that turns browser events into engine calls.

Loaded by :mod:`vstreamer.ui.launcher` (``vstreamer ui``) after it configured :mod:`vstreamer.ui.state`.
Personas are chat profiles; the persona greets first; replies stream from the engine; the stop button and a
closed tab both cancel the reply task, which closes the engine stream and so the generation upstream.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import chainlit as cl
from chainlit.context import context
from chainlit.types import ThreadDict

from vstreamer.engine import Conversation, SamplingOverrides, Turn
from vstreamer.errors import VStreamerError
from vstreamer.persona import Persona
from vstreamer.ui import auth, profiles, texts
from vstreamer.ui import state as ui_state
from vstreamer.ui.datalayer import StoreDataLayer
from vstreamer.ui.emotion import EmotionFilter
from vstreamer.ui.options import LOCAL_USER
from vstreamer.ui.stopping import install_quiet_stop

logger = logging.getLogger(__name__)
STATE = ui_state.current()


@cl.on_app_startup
async def _startup() -> None:
    await STATE.start()


@cl.on_app_shutdown
async def _shutdown() -> None:
    await STATE.stop()


@cl.data_layer
def _data_layer() -> StoreDataLayer:
    return StoreDataLayer(STATE.store, STATE.describe, decorate=STATE.shown_turn)


if STATE.options.auth == "password":

    @cl.password_auth_callback
    async def _login(username: str, password: str) -> cl.User | None:
        identifier = auth.check_password(STATE.options, username, password)
        return cl.User(identifier=identifier) if identifier else None

else:

    @cl.header_auth_callback
    async def _local_user(headers: Any) -> cl.User | None:
        identifier = auth.local_user(headers)
        if identifier is None:
            logger.warning(
                "refused a browser that addressed the UI as %r (not localhost)", headers.get("host")
            )
            return None
        return cl.User(identifier=identifier)


@cl.set_chat_profiles
async def _chat_profiles(user: cl.User | None, language: str | None = None) -> list[cl.ChatProfile]:
    personas = await STATE.personas()
    # In a thread: it writes the avatars of personas imported since the start.
    return await asyncio.to_thread(
        profiles.chat_profiles, personas, _user_name(user),
        default_id=STATE.persona(None).id, public_dir=STATE.app_root / "public",
    )  # fmt: skip


@cl.on_chat_start
async def _chat_start() -> None:
    persona = STATE.persona(cl.user_session.get("chat_profile"))
    user = cl.user_session.get("user")
    conversation = Conversation(persona.id, user_name=_user_name(user))
    conversation.id = context.session.thread_id
    # Long-term memory is kept per viewer: the logged-in user (one shared local user without login).
    conversation.platform, conversation.viewer_id = "web", user.identifier if user else LOCAL_USER
    greetings = persona.greetings()
    if greetings:
        greeting = Turn("assistant", persona.render(greetings[0], conversation.user_name))
        conversation.add(greeting)
        # As a reopened thread shows it: a card's emotion tags ("[joy] Hello") as a badge, never raw text.
        shown = STATE.shown_turn(greeting, persona.id)
        await cl.Message(content=shown, author=persona.name, id=greeting.id).send()
    _remember(persona, conversation, stored=False)
    await profiles.settings_panel(STATE.require_runtime().engine, persona).send()


@cl.on_chat_resume
async def _chat_resume(thread: ThreadDict) -> None:
    store = STATE.store()
    user = cl.user_session.get("user")
    record = await store.get_session(thread["id"], owner=user.identifier if user else None)
    if record is None:
        return
    persona = STATE.persona(record.persona_id)
    conversation = await store.load_conversation(record.id)
    _remember(persona, conversation, stored=True)
    await profiles.settings_panel(STATE.require_runtime().engine, persona).send()


@cl.on_settings_update
async def _settings_update(values: dict[str, Any]) -> None:
    cl.user_session.set("overrides", _overrides(values))


@cl.on_message
async def _message(message: cl.Message) -> None:
    persona: Persona = cl.user_session.get("persona")
    conversation: Conversation = cl.user_session.get("conversation")
    if persona is None or conversation is None:  # a message before the chat started (reconnect race)
        await _chat_start()
        persona, conversation = cl.user_session.get("persona"), cl.user_session.get("conversation")
    await _ensure_stored(conversation, title=message.content)
    await _reply(persona, conversation, message.content)


@cl.on_chat_end
async def _chat_end() -> None:
    # Chainlit keeps a task running when the browser goes away; an abandoned reply must stop spending tokens.
    task = context.session.current_task
    if task is not None and not task.done():
        logger.info("browser left mid-reply: cancelling the generation")
        task.cancel()


install_quiet_stop()


async def _reply(persona: Persona, conversation: Conversation, text: str) -> None:
    engine = STATE.require_runtime().engine
    overrides: SamplingOverrides | None = cl.user_session.get("overrides")
    reply = cl.Message(content="", author=persona.name)
    emotion_filter = EmotionFilter()
    stream = engine.reply(conversation, persona, text, overrides=overrides)
    status, error = "complete", ""
    try:
        async for event in stream:
            if event.kind == "delta":
                await reply.stream_token(emotion_filter.feed(event.text))
    except asyncio.CancelledError:
        status = "interrupted"
        raise
    except VStreamerError as exc:
        logger.warning("reply failed: %s", exc)
        status, error = "failed", texts.error_text(persona, exc)
    finally:
        await stream.aclose()  # stops the generation upstream when we leave early
        if conversation.turns and conversation.turns[-1].role == "assistant":
            status = conversation.turns[-1].status if status == "complete" else status
        reply.content += emotion_filter.flush()
        reply.content = texts.shown_reply(persona, reply.content, status, emotion_filter.emotions, error)
        await asyncio.shield(_finish(reply))


async def _finish(reply: cl.Message) -> None:
    try:
        await reply.send()
    except Exception:  # the browser may be gone; the turn is stored anyway
        logger.debug("could not send the final reply", exc_info=True)


async def _ensure_stored(conversation: Conversation, *, title: str) -> None:
    """Create the store session on the first message (opening the page alone stores nothing)."""
    if cl.user_session.get("stored"):
        return
    user = cl.user_session.get("user")
    store = STATE.store()
    await store.create_session(
        conversation.persona_id, owner=user.identifier if user else LOCAL_USER, platform="web",
        viewer_id=conversation.viewer_id, user_name=conversation.user_name, title=title.strip()[:80], session_id=conversation.id,
    )  # fmt: skip
    for turn in conversation.turns:  # the greeting
        await store.save_turn(conversation, turn)
    cl.user_session.set("stored", True)


def _remember(persona: Persona, conversation: Conversation, *, stored: bool) -> None:
    cl.user_session.set("persona", persona)
    cl.user_session.set("conversation", conversation)
    cl.user_session.set("stored", stored)
    cl.user_session.set("overrides", None)


def _user_name(user: cl.User | None) -> str:
    if user is None or user.identifier == LOCAL_USER:
        return STATE.settings.user_name
    return user.display_name or user.identifier


_SLIDERS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.05, 1.0),
    "max_tokens": (1, 2**31),
}
"""The ranges of the settings panel's sliders (:func:`vstreamer.ui.profiles.settings_panel`); ``max_tokens`` tops out
at the engine's budget, which :meth:`~vstreamer.engine.DialogueEngine.sampling_for` applies (no context window comes
near ``2**31``)."""


def _overrides(values: dict[str, Any]) -> SamplingOverrides:
    """The panel's values as overrides. A socket message can carry anything: what is no finite number keeps the
    default, and the rest is held to the sliders' ranges (the engine would refuse the reply otherwise)."""

    def number(key: str) -> float | None:
        value = values.get(key)
        if not isinstance(value, int | float) or (isinstance(value, float) and not math.isfinite(value)):
            return None
        low, high = _SLIDERS[key]
        return float(min(max(value, low), high))  # compared as is: 10**400 is an int no float can hold

    max_tokens = number("max_tokens")
    return SamplingOverrides(
        temperature=number("temperature"),
        top_p=number("top_p"),
        max_tokens=int(max_tokens) if max_tokens is not None else None,
    )
