"""The store's persona table: personas imported through the API, each owned by the key that imported it."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Literal

from sqlalchemy import delete, select, update

from vstreamer.store.database import dialect_insert, shielded
from vstreamer.store.records import utc_now
from vstreamer.store.tables import PersonaRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

PersonaWrite = Literal["created", "replaced", "exists", "owned", "deleted", "missing"]
"""What :meth:`PersonaTables.save_persona` or :meth:`PersonaTables.delete_persona` did (or found in its way)."""


class PersonaTables:
    """Mixed into :class:`vstreamer.store.Store`; every method is one short transaction."""

    def _tx(self) -> AbstractAsyncContextManager[AsyncSession]:
        raise NotImplementedError

    @shielded
    async def save_persona(
        self,
        persona_id: str,
        name: str,
        data: str,
        *,
        owner: str,
        avatar_png: bytes | None,
        replace: bool = False,
    ) -> PersonaWrite:
        """Store a persona imported with ``owner``'s key: ``created``; ``replaced`` (only with ``replace``, only one
        this owner stored); or nothing, ``exists`` or ``owned`` (stored with another key). Checked and written in the
        database, in one statement each: instances sharing it (or a check that read an old copy) cannot overwrite
        another key's persona."""
        fields = {"name": name, "data": data, "avatar_png": avatar_png}
        async with self._tx() as session:
            if replace:
                mine = (PersonaRow.id == persona_id) & (PersonaRow.owner == owner)
                updated = await session.execute(update(PersonaRow).where(mine).values(**fields))
                if getattr(updated, "rowcount", 0):
                    return "replaced"
            insert = dialect_insert(session.get_bind().dialect.name)
            row = {"id": persona_id, "owner": owner, "created_at": utc_now(), **fields}
            made = await session.execute(insert(PersonaRow).values(row).on_conflict_do_nothing())
            if getattr(made, "rowcount", 0):
                return "created"
            holder = await session.scalar(select(PersonaRow.owner).where(PersonaRow.id == persona_id))
        return "owned" if replace or holder != owner else "exists"

    @shielded
    async def persona_rows(self) -> list[tuple[str, bytes | None, str]]:
        """Every stored persona's JSON, avatar and owner (the API key that imported it)."""
        async with self._tx() as session:
            rows = (await session.scalars(select(PersonaRow).order_by(PersonaRow.id))).all()
        return [(r.data, r.avatar_png, r.owner) for r in rows]

    @shielded
    async def delete_persona(self, persona_id: str, *, owner: str | None = None) -> PersonaWrite:
        """Delete a stored persona (only ``owner``'s, when given): ``deleted``, ``missing`` or ``owned``."""
        which = PersonaRow.id == persona_id
        async with self._tx() as session:
            result = await session.execute(
                delete(PersonaRow).where(which if owner is None else which & (PersonaRow.owner == owner))
            )
            if getattr(result, "rowcount", 0):
                return "deleted"
            held = await session.scalar(select(PersonaRow.id).where(which))
        return "missing" if held is None else "owned"
