"""``vstreamer personas list | show NAME | import FILE | delete NAME``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from vstreamer.config import Settings
from vstreamer.errors import BackendNotInstalled, PersonaNotFound, StoreError
from vstreamer.persona import Persona, PersonaLibrary
from vstreamer.runtime import stored_personas
from vstreamer.store import Store, open_store
from vstreamer.store.database import default_url


def add_commands(
    commands: Any,
    settings_options: Callable[[argparse.ArgumentParser], None],
    load_settings: Callable[[argparse.Namespace], Settings],
) -> None:
    parser = commands.add_parser("personas", help="list, show, import and delete personas")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="list the available personas")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = actions.add_parser("show", help="show one persona")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print the persona as a Character Card V2 JSON")
    imp = actions.add_parser("import", help="import a persona file (YAML/TOML, card JSON/PNG, CHARX)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--replace", action="store_true", help="replace a persona with the same id")
    delete = actions.add_parser("delete", help="delete an imported persona")
    delete.add_argument("name")
    for sub in (listing, show, imp, delete):
        settings_options(sub)
        sub.set_defaults(handler=lambda a: run(a, load_settings(a)))


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The personas of the files and, when there is a database, those imported through the gateway's API."""
    with asyncio.Runner() as runner:
        store = runner.run(_open_store(settings)) if _has_database(settings) else None
        try:
            stored = runner.run(stored_personas(store)) if store is not None else []
            library = PersonaLibrary(settings.personas_dir, stored=stored)
            if args.action == "delete":
                return _delete(args.name, library, lambda persona_id: runner.run(_unstore(store, persona_id)))
            return _act(args, library, settings)
        finally:
            if store is not None:
                runner.run(store.close())


def _has_database(settings: Settings) -> bool:
    """Whether there is a database to read: listing personas on a new install (or with ``database_url`` naming a
    SQLite file not made yet) does not make an empty one."""
    url = make_url(settings.database_url or default_url(settings.data_dir))
    if url.get_backend_name() == "sqlite":
        return url.database not in (None, "", ":memory:") and Path(url.database).is_file()
    return True


async def _open_store(settings: Settings) -> Store | None:
    """The database, or ``None`` (with a warning) when it cannot be opened: the files' personas are still listed,
    shown and imported while a PostgreSQL server is down, or its driver (the postgres extra) is not installed."""
    try:
        return await open_store(settings.database_url, settings.data_dir)
    except (StoreError, BackendNotInstalled) as exc:
        print(f"warning: personas imported through the API are left out: {exc}", file=sys.stderr)
        return None


async def _unstore(store: Store | None, persona_id: str) -> None:
    assert store is not None  # a stored persona came from it
    await store.delete_persona(persona_id)


def _delete(name: str, library: PersonaLibrary, unstore: Callable[[str], None]) -> int:
    try:
        persona_id = library.get(name).id
    except PersonaNotFound:
        if name not in library.unreadable:
            raise
        persona_id = name  # its files no longer load: deleted by id all the same
    if persona_id in library.stored:
        unstore(persona_id)
        print(
            f"deleted {persona_id} (imported through the API; a running gateway serves it until it restarts)"
        )
        return 0
    library.delete(persona_id)
    print(f"deleted {persona_id}")
    return 0


def _act(args: argparse.Namespace, library: PersonaLibrary, settings: Settings) -> int:
    if args.action == "list":
        items = library.list()
        if args.json:
            print(json.dumps([_summary(p) for p in items], ensure_ascii=False, indent=2))
        for persona in [] if args.json else items:
            print(
                f"{persona.id:<20} {persona.name:<16} {_first_line(persona.render(persona.description, settings.user_name))}"
            )
    elif args.action == "show":
        persona = library.get(args.name)
        if args.json:
            from vstreamer.persona import export_card_json

            print(json.dumps(export_card_json(persona), ensure_ascii=False, indent=2))
        else:
            print(_describe(persona))
    elif args.action == "import":
        persona = library.import_file(args.file, replace=args.replace)
        print(f"imported {persona.id} ({persona.name})")
    return 0


def _first_line(text: str, width: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _summary(persona: Persona) -> dict[str, Any]:
    return {"id": persona.id, "name": persona.name, "language": persona.language, "tags": persona.tags}


def _describe(persona: Persona) -> str:
    lines = [
        f"{persona.name}  (id: {persona.id}, language: {persona.language}, format: {persona.source_format})"
    ]
    for label, value in (
        ("description", persona.description),
        ("personality", persona.personality),
        ("scenario", persona.scenario),
        ("greeting", persona.greeting),
    ):
        if value.strip():
            lines.append(f"\n[{label}]\n{value.strip()}")
    if persona.alternate_greetings:
        lines.append(f"\n[alternate greetings] {len(persona.alternate_greetings)}")
    if persona.lorebook is not None:
        lines.append(f"[lorebook] {len(persona.lorebook.entries)} entries")
    return "\n".join(lines)
