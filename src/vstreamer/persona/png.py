"""Minimal PNG chunk reader/writer (stdlib only) for character cards.

Cards hide their JSON in text chunks: ``chara`` (V2) and ``ccv3`` (V3), base64 of UTF-8 JSON.
Input is untrusted: the signature, every chunk length and CRC are checked, reading stops at IEND,
and compressed text is inflated with a hard output cap.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from vstreamer.errors import PersonaError
from vstreamer.persona.limits import MAX_FILE_BYTES, MAX_INFLATED_BYTES

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = ("chara", "ccv3")
_TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")


@dataclass(frozen=True, slots=True)
class Chunk:
    type: bytes
    data: bytes
    offset: int

    def encode(self) -> bytes:
        return _encode_chunk(self.type, self.data)


def _encode_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def iter_chunks(data: bytes, where: str = "PNG") -> Iterator[Chunk]:
    """Yield the chunks up to and including IEND, validating each one."""
    if len(data) > MAX_FILE_BYTES:
        raise PersonaError(f"{where}: file is {len(data)} bytes, more than the {MAX_FILE_BYTES} allowed")
    if not data.startswith(SIGNATURE):
        raise PersonaError(f"{where}: not a PNG file (bad signature)")
    pos = len(SIGNATURE)
    first = True
    while True:
        if pos + 12 > len(data):
            raise PersonaError(f"{where}: truncated PNG (no IEND chunk; data ends at byte {len(data)})")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if not kind.isalpha() or not kind.isascii():
            raise PersonaError(f"{where}: invalid chunk type {kind!r} at byte {pos}")
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            name = kind.decode("ascii")
            raise PersonaError(
                f"{where}: chunk {name} at byte {pos} declares {length} bytes, past the end of the file"
            )
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise PersonaError(f"{where}: bad CRC in chunk {kind.decode('ascii')} at byte {pos}")
        if first and kind != b"IHDR":
            raise PersonaError(f"{where}: first chunk is {kind.decode('ascii')}, not IHDR")
        first = False
        yield Chunk(kind, body, pos)
        if kind == b"IEND":
            return
        pos = end


def _inflate(data: bytes, where: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_INFLATED_BYTES)
    except zlib.error as exc:
        raise PersonaError(f"{where}: corrupt compressed text ({exc})") from exc
    if inflater.unconsumed_tail:
        raise PersonaError(f"{where}: compressed text inflates past {MAX_INFLATED_BYTES} bytes")
    if not inflater.eof:
        raise PersonaError(f"{where}: compressed text is truncated")
    return out


def card_chunk_text(chunk: Chunk, where: str = "PNG") -> bytes:
    """The text of a tEXt, zTXt or iTXt card chunk, inflated, as the bytes its writer meant.

    Card writers put UTF-8 (mostly ASCII base64) in every chunk type: tEXt/zTXt, which PNG calls
    Latin-1, are taken byte for byte, and iTXt is UTF-8 already (re-encoding it as Latin-1, as if it
    were tEXt, refused 'Zoë' and turned 'MÃ¼ller' into 'Müller').
    """
    here = f"{where}: {chunk.type.decode('ascii')} chunk at byte {chunk.offset}"
    keyword, sep, rest = chunk.data.partition(b"\0")
    if not sep or not 1 <= len(keyword) <= 79:
        raise PersonaError(f"{here}: malformed keyword")
    if chunk.type == b"tEXt":
        return rest
    if chunk.type == b"zTXt":
        if not rest or rest[0] != 0:
            raise PersonaError(f"{here}: unknown compression method")
        return _inflate(rest[1:], here)
    if len(rest) < 2:
        raise PersonaError(f"{here}: truncated iTXt header")
    compressed, method = rest[0], rest[1]
    parts = rest[2:].split(b"\0", 2)
    if len(parts) != 3:
        raise PersonaError(f"{here}: malformed iTXt (language/translated keyword)")
    body = parts[2]
    if compressed:
        if method != 0:
            raise PersonaError(f"{here}: unknown compression method")
        body = _inflate(body, here)
    return body


def find_card_chunks(data: bytes, where: str = "PNG") -> dict[str, Chunk]:
    """The ``chara``/``ccv3`` text chunks of a PNG by lower-cased keyword (the first of each wins),
    not yet inflated: a reader decodes only the one it uses."""
    found: dict[str, Chunk] = {}
    for chunk in iter_chunks(data, where):
        if chunk.type not in _TEXT_TYPES:
            continue
        keyword = chunk.data[:6].partition(b"\0")[0].lower().decode("latin-1")
        # later chunks of a keyword are never inflated, so a file inflates to at most
        # len(CARD_KEYWORDS) * MAX_INFLATED_BYTES
        if keyword in CARD_KEYWORDS and keyword not in found:
            found[keyword] = chunk
    return found


def read_card_chunks(data: bytes, where: str = "PNG") -> dict[str, bytes]:
    """The text of the ``chara``/``ccv3`` chunks of a PNG by lower-cased keyword (see ``card_chunk_text``)."""
    return {key: card_chunk_text(chunk, where) for key, chunk in find_card_chunks(data, where).items()}


def strip_card_chunks(data: bytes, where: str = "PNG") -> bytes:
    """The same PNG without card text chunks (the image as an avatar)."""
    out = [SIGNATURE]
    for chunk in iter_chunks(data, where):
        if chunk.type in _TEXT_TYPES:
            keyword = chunk.data.partition(b"\0")[0].lower()
            if keyword.decode("latin-1") in CARD_KEYWORDS:
                continue
        out.append(chunk.encode())
    return b"".join(out)


def with_text_chunks(data: bytes, texts: dict[str, str], where: str = "PNG") -> bytes:
    """A copy of the PNG with its card chunks replaced by ``texts`` (tEXt, Latin-1), before IEND."""
    stripped = strip_card_chunks(data, where)
    iend = len(stripped) - 12  # iter_chunks stops at IEND, so it is the last 12 bytes
    added = b"".join(
        _encode_chunk(b"tEXt", key.encode("latin-1") + b"\0" + text.encode("latin-1"))
        for key, text in texts.items()
    )
    return stripped[:iend] + added + stripped[iend:]


def tiny_png(rgba: tuple[int, int, int, int] = (255, 182, 193, 255), size: int = 8) -> bytes:
    """A small solid-colour PNG, the avatar of personas without an image."""
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    row = b"\0" + bytes(rgba) * size
    idat = zlib.compress(row * size, 9)
    return (
        SIGNATURE + _encode_chunk(b"IHDR", ihdr) + _encode_chunk(b"IDAT", idat) + _encode_chunk(b"IEND", b"")
    )
