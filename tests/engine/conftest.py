from __future__ import annotations

import pytest

from vstreamer.persona import Lorebook, LoreEntry, Persona


@pytest.fixture
def persona() -> Persona:
    return Persona(
        id="tester",
        name="Tester",
        description="{{char}} is a cheerful streamer who talks to {{user}}.",
        personality="warm, quick",
        scenario="a live stream",
        greeting="Hello {{user}}!",
        example_dialogue="<START>\n{{user}}: hi\n{{char}}: hey!",
        creator_notes="SECRET-CREATOR-NOTE",
        language="en",
        lorebook=Lorebook(
            scan_depth=2,
            entries=[
                LoreEntry(keys=["cat"], content="{{char}} has a cat named Mochi.", position="after_char")
            ],
        ),
    )
