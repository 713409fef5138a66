"""Throughput of normalise + match with the ~51k-term konsheng lexicon, and the stream guard's latency.

Run: PYTHONPATH=src python bench/bench_moderation.py [--mb 8] [--baseline-src DIR]
Prints first the gateway hot path, per request as the gateway runs it (persona "nova", message
"hi there", a reply streamed as 16 word pieces, the default lexicon): ``prepare_user_text``, the
creation of the output guard (system prompt seen before, and with a new memory block), each
``feed``, ``finish`` + ``result`` and the JSON-lines audit log's ``record``; with
``--baseline-src`` (the ``src`` folder of another checkout, e.g. ``git archive HEAD src | tar -x
-C /tmp/base``) the same measurement runs on that code in a subprocess and both are printed side
by side. Then characters per second for a plain single-library baseline (pyahocorasick, and
ahocorasick_rs when installed) over the raw text next to our normalisation and matching (the
str/re path used for short messages and the numpy path used for long texts), in the same run, then
the per-message decision time and the stream guard's added latency per token.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vstreamer.safety import OutputGuard

ROOT = Path(__file__).resolve().parents[1]
KONSHENG = ROOT.parent / "shared" / "data" / "lexicon" / "konsheng-sensitive-lexicon"
CHAT = ROOT / "tests" / "safety" / "data"


def build_text(target_chars: int, terms: list[str], seed: int = 7) -> tuple[str, list[str]]:
    rng = random.Random(seed)
    lines = []
    for name in ("ordinary_chat_zh.txt", "ordinary_chat_en.txt"):
        lines += [x for x in (CHAT / name).read_text(encoding="utf-8").splitlines() if x]
    variants = [lambda s: s, str.upper, lambda s: " ".join(s), lambda s: s.translate({0x20: 0x3000})]
    messages, size = [], 0
    while size < target_chars:
        msg = rng.choice(lines)
        r = rng.random()
        if r < 0.02:  # a listed term, sometimes disguised
            msg = msg + rng.choice(variants)(rng.choice(terms))
        elif r < 0.05:  # full-width text
            msg = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in msg)
        messages.append(msg)
        size += len(msg) + 1
    return "\n".join(messages), messages


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def best_of_fresh(fn: Callable[[str], object], text: str, repeat: int = 3) -> float:
    """:func:`best_of` for a function of ``text``, given a new copy of it each time: ``normalize_short`` keeps its
    last result for the very same string object (the gateway's guard asks twice), which a repeat would time."""
    best = float("inf")
    for _ in range(repeat):
        copy = text.encode().decode()
        t = time.perf_counter()
        fn(copy)
        best = min(best, time.perf_counter() - t)
    return best


def report(name: str, chars: int, seconds: float) -> None:
    print(f"  {name:<58} {chars / seconds / 1e6:9.1f} M chars/s   ({seconds * 1e3:8.1f} ms)")


HI_REPLY = "Hello Sam! It is lovely to see you here today, what game should we play next? Bolt says hi!"
ZH_REPLY = "哈哈，欢迎来到直播间！今天我们来聊聊最近玩的独立游戏，你们有什么推荐吗？我最近在玩一个太空探索的游戏，超级好玩！"


def per_call(fn: Callable[[], object], loops: int, repeat: int = 5) -> float:
    """Best mean seconds per call of ``fn`` over ``repeat`` rounds of ``loops`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t) / loops)
    return best


class HotPath:
    """One gateway request's moderation, step by step (only API that every version has)."""

    def __init__(self, protected: list[str]) -> None:
        from vstreamer.safety import LoggingAuditLog, SafetyPipeline

        self.pipe = SafetyPipeline.default(audit=LoggingAuditLog())
        self.protected = protected
        self.words = [w + " " for w in HI_REPLY.split(" ")][:16]
        self.zh = [ZH_REPLY[i : i + 3] for i in range(0, len(ZH_REPLY), 3)]

    def guard(self, extra: str = "") -> OutputGuard:
        texts = self.protected + ([extra] if extra else [])
        return self.pipe.output_guard(protected_texts=texts, language="en", persona_name="Nova", source="api")

    def stream(self, pieces: list[str]) -> float:
        """Mean seconds per feed() over one reply."""
        g = self.guard()
        t = time.perf_counter()
        for piece in pieces:
            g.feed(piece)
        return (time.perf_counter() - t) / len(pieces)

    def first(self) -> float:
        """Seconds of the first feed(): the start of a reply that came in one burst (the backend hands the first
        24 characters over on their own)."""
        g = self.guard()
        t = time.perf_counter()
        g.feed(HI_REPLY[:24])
        return time.perf_counter() - t

    def ending(self) -> float:
        """Seconds of finish() + result() after the 16 words."""
        g = self.guard()
        for piece in self.words:
            g.feed(piece)
        t = time.perf_counter()
        g.finish()
        g.result()
        return time.perf_counter() - t

    def request(self) -> None:
        self.pipe.prepare_user_text("hi there", source="api")
        g = self.guard()
        for piece in self.words:
            g.feed(piece)
        g.finish()
        g.result()


def hot_path(protected: list[str], loops: int) -> dict[str, float]:
    """Microseconds per step of one gateway request."""
    import tempfile

    from vstreamer.safety import JsonlAuditLog
    from vstreamer.safety.audit import make_record

    hp = HotPath(protected)
    hp.request()  # warm up: lazily built tables
    memory = (f"Memory {i}: " + "the viewer Sam likes puzzle games and cats. " * 7 for i in range(10**9))
    out = {
        "prepare_user_text('hi there')": per_call(
            lambda: hp.pipe.prepare_user_text("hi there", source="api"), loops
        ),
        "output_guard(), texts seen before": per_call(hp.guard, loops),
        "output_guard(), + a new 300-char memory block": per_call(lambda: hp.guard(next(memory)), loops),
        "feed(), the first text (24 chars of a burst)": min(hp.first() for _ in range(loops // 4)),
        "feed(), per piece (16 English words)": min(hp.stream(hp.words) for _ in range(loops // 4)),
        "feed(), per piece (3-char Chinese pieces)": min(hp.stream(hp.zh) for _ in range(loops // 4)),
        "feed(), per piece (192 pieces, one reply)": min(
            hp.stream(hp.words * 12) for _ in range(loops // 40)
        ),
        "finish() + result()": min(hp.ending() for _ in range(loops // 4)),
        "whole request": per_call(hp.request, loops // 8),
    }
    with tempfile.TemporaryDirectory() as tmp:
        log = JsonlAuditLog(Path(tmp) / "audit.jsonl")
        decision = hp.pipe.moderate("hi there", direction="input")
        record = make_record(decision, direction="input", source="api", store="masked")
        out["JsonlAuditLog.record()"] = per_call(lambda: log.record(record), loops)
        getattr(log, "close", lambda: None)()  # the earlier, synchronous log has none
    return {k: v * 1e6 for k, v in out.items()}


def nova_protected_texts() -> list[str]:
    """The system messages the engine builds for persona "nova" (what output_guard receives)."""
    import asyncio

    from vstreamer.engine import ContextBudget, Conversation, DialogueEngine, Turn
    from vstreamer.llm.fake import FakeBackend
    from vstreamer.persona import PersonaLibrary

    persona = PersonaLibrary(None).get("nova")
    engine = DialogueEngine(FakeBackend(), ContextBudget(4096, 256))
    conversation = Conversation(persona.id, user_name="Sam", turns=[Turn("user", "hi there")])
    context = asyncio.run(engine.build_context(conversation, persona))
    return [m.content for m in context.messages if m.role == "system"]


def report_hot_path(loops: int, baseline_src: Path | None) -> None:
    import json
    import os
    import subprocess

    protected = nova_protected_texts()
    ours = hot_path(protected, loops)
    base: dict[str, float] = {}
    if baseline_src is not None:
        env = {**os.environ, "PYTHONPATH": str(baseline_src)}
        done = subprocess.run(
            [sys.executable, __file__, "--hot-path-json", "--loops", str(loops)],
            input=json.dumps(protected), capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        base = json.loads(done.stdout)
    print(f"gateway hot path, per request (persona nova, {sum(map(len, protected))} chars of system prompt):")
    print(f"  {'':<48} {'baseline' if base else '':>10} {'ours':>10}")
    for name, us in ours.items():
        old = f"{base[name]:8.1f}us" if name in base else ""
        ratio = f"  x{base[name] / us:.1f}" if name in base and us else ""
        print(f"  {name:<48} {old:>10} {us:8.1f}us{ratio}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=4.0, help="millions of characters of mixed text")
    ap.add_argument("--loops", type=int, default=2000, help="calls per timing of the hot path")
    ap.add_argument("--baseline-src", type=Path, help="src folder of the code to compare the hot path with")
    ap.add_argument("--hot-path-only", action="store_true", help="stop after the hot path")
    ap.add_argument("--hot-path-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.hot_path_json:  # the baseline subprocess: protected texts in, numbers out
        import json

        print(json.dumps(hot_path(json.loads(sys.stdin.read()), args.loops)))
        return 0
    report_hot_path(args.loops, args.baseline_src)
    if args.hot_path_only:
        return 0
    print()
    if not KONSHENG.is_dir():
        print(f"skip: konsheng lexicon not found at {KONSHENG}")
        return 0

    import ahocorasick

    from vstreamer.safety import SafetyPipeline
    from vstreamer.safety.lexicon import load_lexicon
    from vstreamer.safety.matcher import CompiledLexicon
    from vstreamer.safety.normalize import char_table, normalize, normalize_short
    from vstreamer.safety.vector import normalize_codes

    char_table()
    normalize_codes("warm up")
    raw_terms = sorted(
        {
            line.strip()
            for f in KONSHENG.rglob("*.txt")
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines()
            if len(line.strip()) > 1
        }
    )
    text, messages = build_text(int(args.mb * 1e6), raw_terms)
    n = len(text)
    print(
        f"python {sys.version.split()[0]}; text: {n:,} chars in {len(messages):,} messages; raw terms: {len(raw_terms):,}"
    )

    t = time.perf_counter()
    base = ahocorasick.Automaton()
    for w in raw_terms:
        base.add_word(w, len(w))
    base.make_automaton()
    print(f"build: baseline pyahocorasick {time.perf_counter() - t:.2f} s", end="; ")
    t = time.perf_counter()
    lex = load_lexicon([KONSHENG])
    compiled = CompiledLexicon(lex)
    compiled.find(text[:10_000])  # builds the compact automaton used for long texts
    print(f"ours (load+normalise terms+all automata) {time.perf_counter() - t:.2f} s; keys {compiled.size:,}")

    print("\nwhole text:")
    report("baseline: pyahocorasick.iter over raw text", n, best_of(lambda: sum(1 for _ in base.iter(text))))
    rs = None
    try:
        import ahocorasick_rs

        rs = ahocorasick_rs.AhoCorasick(raw_terms)
    except ImportError:
        print("  (ahocorasick_rs not installed)")
    baseline_rs = best_of(lambda: rs.find_matches_as_indexes(text, overlapping=True)) if rs else 0.0
    if rs:
        report("baseline: ahocorasick_rs over raw text", n, baseline_rs)
    report("ours: normalise only, str/re path (short messages)", n, best_of_fresh(normalize_short, text))
    report("ours: normalise only, numpy path (long texts)", n, best_of(lambda: normalize(text)))
    report(
        f"ours: normalise + match, str/re path ({compiled.backend})",
        n,
        best_of_fresh(lambda copy: compiled.candidates(normalize_short(copy)), text),
    )
    best = best_of(lambda: compiled.find(text))
    report(f"ours: normalise + match, numpy + compact automaton ({compiled.backend})", n, best)
    found = compiled.find(text)
    same = sorted((s, e, k) for k, s, e in found) == sorted(compiled.candidates(normalize_short(text)))
    print(f"  candidate matches: {len(found):,}; both paths agree: {same}")
    goal = "met" if n / best >= 50e6 else "not met"
    vs = f"{baseline_rs / best:.2f}x the ahocorasick_rs baseline; " if rs else ""
    print(f"  normalise + match: {n / best / 1e6:.1f} M chars/s, {vs}goal 50 M chars/s {goal}")

    print("\nper message (full decision: normalise, match, verify, map spans, PII, policy):")
    pipe = SafetyPipeline.default(lexicon_dirs=[KONSHENG])
    sample = messages[:20000]
    chars = sum(len(m) for m in sample)
    secs = best_of(
        lambda: [pipe.decide(m, pipe.analyse(m, direction="input", source="live")) for m in sample], 1
    )
    report(f"ours: moderate() x {len(sample):,} messages", chars, secs)
    print(f"  mean latency per message: {secs / len(sample) * 1e6:.1f} us")
    default = SafetyPipeline.default()
    secs = best_of(
        lambda: [default.decide(m, default.analyse(m, direction="input", source="live")) for m in sample], 1
    )
    report("ours: moderate() default lexicon only", chars, secs)

    print("\nstream guard (tokens of 1-4 characters):")
    rng = random.Random(3)
    replies = [" ".join(rng.sample(messages, 6)) for _ in range(200)]
    for name, p in (("default lexicon", default), ("with konsheng", pipe)):
        lat: list[float] = []
        held = 0
        for reply in replies:
            guard = p.output_guard(protected_texts=["你是虚拟主播小星，性格开朗，喜欢游戏和唱歌。"])
            i = 0
            while i < len(reply) and not guard.blocked:
                k = rng.randint(1, 4)
                t = time.perf_counter()
                guard.feed(reply[i : i + k])
                lat.append(time.perf_counter() - t)
                i += k
            guard.finish()
            held = max(held, guard.max_held)
        lat.sort()
        print(
            f"  {name:<16} added latency per token: median {statistics.median(lat) * 1e6:.0f} us, "
            f"p99 {lat[int(len(lat) * 0.99)] * 1e6:.0f} us; most chars held back: {held}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
