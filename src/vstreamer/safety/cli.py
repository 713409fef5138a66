"""``vstreamer moderate``: one message per stdin line in, one JSON object per line out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from vstreamer.errors import VStreamerError
from vstreamer.safety.audit import MemoryAuditLog
from vstreamer.safety.pipeline import SafetyPipeline


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vstreamer moderate", description="Moderate one message per line (JSON lines out)."
    )
    p.add_argument("--direction", choices=("input", "output"), default="input")
    p.add_argument("--source", choices=("web", "live", "api", "cli"), default="cli")
    p.add_argument(
        "--lexicon", action="append", default=[], type=Path, metavar="DIR", help="extra lexicon folder"
    )
    p.add_argument(
        "--no-default-lexicon", action="store_true", help="do not load the curated default lexicon"
    )
    return p


def run_moderate(argv: list[str] | None, stdin: TextIO, stdout: TextIO) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad arguments or lexicon)."""
    args = build_parser().parse_args(argv)
    try:
        pipeline = SafetyPipeline.default(
            lexicon_dirs=args.lexicon,
            audit=MemoryAuditLog(maxlen=1),
            include_default=not args.no_default_lexicon,
        )
    except VStreamerError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    for line in stdin:
        text = line.rstrip("\r\n")
        if args.direction == "input":
            # As a viewer's message is prepared for the prompt: take-over phrases and forged control tokens too
            # (``injection``, and the text the prompt would get), not only the lexicon and personal data.
            decision = pipeline.prepare_user_text(text, source=args.source)
            row = decision.result.to_json()  # its text is the line with forged control tokens taken out
            if decision.injection and "injection" not in row["categories"]:  # a forged token alone adds none
                row["categories"] = [*row["categories"], "injection"]
            row |= {"input": text, "injection": decision.injection, "prompt": decision.text_for_prompt}
        else:
            row = pipeline.moderate(text, direction="output", source=args.source).to_json()
        stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        stdout.flush()
    return 0


def main() -> None:  # pragma: no cover - thin wrapper
    # A stray invalid byte is one line's U+FFFD, not the end of the run.
    sys.stdin.reconfigure(encoding="utf-8", errors="replace")  # type: ignore[union-attr]
    sys.stdout.reconfigure(encoding="utf-8")  # type: ignore[union-attr]
    raise SystemExit(run_moderate(None, sys.stdin, sys.stdout))


if __name__ == "__main__":
    main()
