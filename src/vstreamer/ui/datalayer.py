"""Chainlit's data layer over the project's store: threads are store sessions, steps are stored turns.

History lives in one place (the store the gateway uses too). The engine commits every turn itself, so the step
writes Chainlit makes are no-ops here; reads rebuild Chainlit's thread and step dicts from the stored turns.
Users are not stored: a user's id *is* its login identifier, and a session's ``owner`` is that identifier.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

from chainlit.data.base import BaseDataLayer
from chainlit.types import Feedback, PageInfo, PaginatedResponse, Pagination, ThreadDict, ThreadFilter
from chainlit.user import PersistedUser, User

from vstreamer.engine import Turn
from vstreamer.engine.conversation import RESENT
from vstreamer.store import SessionRecord, Store
from vstreamer.ui.emotion import strip_emotions

if TYPE_CHECKING:
    from chainlit.element import Element, ElementDict
    from chainlit.step import StepDict

logger = logging.getLogger(__name__)

THREAD_TURNS = 1000
"""The newest turns a resumed thread shows."""

StoreGetter = Callable[[], Store]
Describe = Callable[[str], tuple[str, str]]
"""persona id -> (display name, chat profile name)."""


def iso(moment: datetime | float) -> str:
    """Chainlit's timestamp format: naive UTC ISO 8601 with a trailing ``Z``."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def turn_step(turn: Turn, thread_id: str, *, persona_name: str, user_name: str) -> StepDict:
    """A stored turn as the message step Chainlit shows."""
    content, emotions = strip_emotions(turn.content) if turn.role == "assistant" else (turn.content, [])
    step: dict[str, Any] = {
        "id": turn.id,
        "threadId": thread_id,
        "parentId": None,
        "name": persona_name if turn.role == "assistant" else user_name,
        "type": "assistant_message" if turn.role == "assistant" else "user_message",
        "output": content,
        "input": "",
        "createdAt": iso(turn.created_at),
        "start": iso(turn.created_at),
        "end": iso(turn.created_at),
        "streaming": False,
        "isError": turn.status == "failed",
        "metadata": {"status": turn.status, "emotions": emotions},
    }
    return step  # type: ignore[return-value]


def _refusal(turn: Turn, after: Turn | None) -> tuple[Turn, ...]:
    """A failed user message refused before any reply (too long) is followed by the note the chat showed live. One
    with a reply after it (the LLM server refused it) has its note there; one sent again, none."""
    if turn.role != "user" or turn.status != "failed" or turn.error_code == RESENT:
        return ()
    if after is not None and after.role == "assistant":
        return ()
    return (Turn("assistant", "", "failed", f"{turn.id}-note", turn.created_at, error=turn.error),)


class StoreDataLayer(BaseDataLayer):
    """Chainlit persistence backed by :class:`vstreamer.store.Store`."""

    def __init__(
        self, store: StoreGetter, describe: Describe, *, decorate: Callable[[Turn, str], str]
    ) -> None:
        self._store = store
        self._describe = describe
        self._decorate = decorate
        """(turn, persona id) -> the text shown for a stored turn (adds the interrupted mark, error notes)."""

    # --- users: not stored; the identifier is the id ---------------------------------------------------

    async def get_user(self, identifier: str) -> PersistedUser | None:
        return PersistedUser(id=identifier, identifier=identifier, createdAt=iso(0.0), metadata={})

    async def create_user(self, user: User) -> PersistedUser | None:
        return await self.get_user(user.identifier)

    # --- feedback, elements, favourites: not kept ------------------------------------------------------

    async def delete_feedback(self, feedback_id: str) -> bool:
        return True

    async def upsert_feedback(self, feedback: Feedback) -> str:
        return feedback.id or ""

    async def create_element(self, element: Element) -> None:
        return None

    async def get_element(self, thread_id: str, element_id: str) -> ElementDict | None:
        return None

    async def delete_element(self, element_id: str, thread_id: str | None = None) -> None:
        return None

    async def get_favorite_steps(self, user_id: str) -> list[StepDict]:
        return []

    # --- steps: the engine commits turns itself --------------------------------------------------------

    async def create_step(self, step_dict: StepDict) -> None:
        return None

    async def update_step(self, step_dict: StepDict) -> None:
        return None

    async def delete_step(self, step_id: str) -> None:
        return None

    # --- threads = store sessions ----------------------------------------------------------------------

    async def get_thread_author(self, thread_id: str) -> str:
        record = await self._store().get_session(thread_id)
        return record.owner if record is not None else ""

    async def delete_thread(self, thread_id: str) -> None:
        await self._store().delete_session(thread_id)

    async def list_threads(
        self, pagination: Pagination, filters: ThreadFilter
    ) -> PaginatedResponse[ThreadDict]:
        if not filters.userId:
            return PaginatedResponse(PageInfo(False, None, None), [])
        offset = int(pagination.cursor) if pagination.cursor and pagination.cursor.isdigit() else 0
        # Searched in the database: among all of the user's threads, not within the page at hand.
        records = await self._store().list_sessions(
            owner=filters.userId, limit=pagination.first + 1, offset=offset, search=filters.search or None
        )
        has_next = len(records) > pagination.first
        records = records[: pagination.first]
        threads = [self._thread(r, []) for r in records]
        end = str(offset + pagination.first) if has_next else None
        return PaginatedResponse(PageInfo(has_next, str(offset), end), threads)

    async def get_thread(self, thread_id: str) -> ThreadDict | None:
        store = self._store()
        record = await store.get_session(thread_id)
        if record is None:
            return None
        persona_name, _ = self._describe(record.persona_id)
        user_name = record.user_name or record.owner
        steps = []
        # The newest turns of a long thread (the oldest came first, and a resumed thread ended a thousand turns in).
        total = await store.count_messages(thread_id)
        turns = await store.list_messages(thread_id, limit=THREAD_TURNS, offset=max(0, total - THREAD_TURNS))
        for turn, after in zip_longest(turns, turns[1:]):
            for shown in (turn, *_refusal(turn, after)):
                step = turn_step(shown, thread_id, persona_name=persona_name, user_name=user_name)
                step["output"] = self._decorate(shown, record.persona_id)
                steps.append(step)
        return self._thread(record, steps)

    async def update_thread(
        self,
        thread_id: str,
        name: str | None = None,
        user_id: str | None = None,
        metadata: dict | None = None,
        tags: list[str] | None = None,
    ) -> None:
        # Sessions are created by the app when the first message is sent; Chainlit's other thread fields
        # (metadata it persists on disconnect, tags) are derived from the session on read.
        if name is None:
            return
        store = self._store()
        record = await store.get_session(thread_id)
        if record is not None and record.title != name[:200]:
            await store.rename_session(thread_id, name)

    async def build_debug_url(self) -> str:
        return ""

    async def close(self) -> None:
        return None  # the runtime owns the store

    def _thread(self, record: SessionRecord, steps: list[StepDict]) -> ThreadDict:
        persona_name, profile = self._describe(record.persona_id)
        return {
            "id": record.id,
            # Chainlit's sidebar sorts and groups the threads it loaded ("Today", "Previous 7 days") by this date:
            # the last use, as the pages are ordered, or a chat continued today sat under the month it began.
            "createdAt": iso(record.updated_at),
            "name": record.title or persona_name,
            "userId": record.owner,
            "userIdentifier": record.owner,
            "tags": [profile],
            "metadata": {"chat_profile": profile, "persona_id": record.persona_id},
            "steps": steps,
            "elements": [],
        }
