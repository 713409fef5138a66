"""Counters of the engine's memory and character-keeping work (exposed by the gateway's metrics)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class EngineStats:
    """Running totals since the engine started."""

    drift_events: int = 0
    """Replies (or retries) caught breaking character."""
    drift_regenerations: int = 0
    """Drifting replies regenerated with a reinforced instruction."""
    drift_fallbacks: int = 0
    """Replies replaced by an in-character line after the retry drifted too."""
    summaries: int = 0
    """Running summaries written."""
    facts_added: int = 0
    """New facts remembered about viewers."""
    extraction_failures: int = 0
    """Fact-extraction answers that were not the JSON asked for."""
