"""CHARX (Character Card V3 zip) reading, defended against zip bombs and hostile member names."""

from __future__ import annotations

import io
import lzma
import struct
import zipfile
import zlib
from typing import Any

from vstreamer.errors import PersonaError
from vstreamer.persona.assets import card_assets, embedded_path, main_icon_index
from vstreamer.persona.limits import (
    MAX_FILE_BYTES,
    MAX_TEXT_BYTES,
    MAX_ZIP_DIRECTORY_BYTES,
    MAX_ZIP_MEMBERS,
    MAX_ZIP_TOTAL_BYTES,
    parse_json,
)
from vstreamer.persona.png import SIGNATURE

CARD_MEMBER = "card.json"
_END = b"PK\x05\x06"  # end of central directory record (22 bytes, then a comment of up to 64 KiB)
_END64 = b"PK\x06\x06"  # ZIP64 end of central directory record (56 bytes, before its locator)
_END64_LOCATOR = b"PK\x06\x07"  # 20 bytes, just before the end record
# what zipfile and its decompressors raise on corrupt archives
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    ValueError,
    OSError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    zlib.error,
    lzma.LZMAError,  # zipfile reads LZMA (method 14) members too, and this is no OSError
    UnicodeDecodeError,
)


def _check_name(name: str, where: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if (
        name.startswith(("/", "\\"))
        or "\\" in name
        or ".." in parts
        or (len(name) > 1 and name[1] == ":")
        or "\0" in name
    ):
        raise PersonaError(f"{where}: unsafe path in archive: {name[:200]!r}")


class _Budget:
    """Counts bytes actually inflated, whatever the headers claim."""

    def __init__(self) -> None:
        self.left = MAX_ZIP_TOTAL_BYTES

    def read(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, where: str) -> bytes:
        cap = min(limit, self.left)
        chunks: list[bytes] = []
        size = 0
        with archive.open(info) as member:
            while True:
                block = member.read(min(65536, cap + 1 - size))
                if not block:
                    break
                size += len(block)
                chunks.append(block)
                if size > cap:
                    raise PersonaError(f"{where}: {info.filename} inflates past {cap} bytes")
        self.left -= size
        return b"".join(chunks)


def _directory_size(data: bytes) -> tuple[int, int] | None:
    """(entries, bytes) of the central directory, read from the end record the way zipfile finds it;
    None when there is no end record (zipfile refuses such data quickly)."""
    start = len(data) - 22
    if not (start >= 0 and data[start : start + 4] == _END and data[-2:] == b"\0\0"):
        start = data.rfind(_END, max(0, len(data) - 22 - 0xFFFF))
        if start < 0 or start + 22 > len(data):
            return None
    entries, size = struct.unpack("<HL", data[start + 10 : start + 16])
    locator = start - 20
    record = locator - 56
    if record >= 0 and data[locator : locator + 4] == _END64_LOCATOR and data[record : record + 4] == _END64:
        entries, size = struct.unpack("<2Q", data[record + 32 : record + 48])
    return entries, size


def _check_directory(data: bytes, where: str) -> None:
    """Refuse an archive whose central directory is too big, before zipfile parses all of it."""
    found = _directory_size(data)
    if found is None:
        return
    entries, size = found
    if entries > MAX_ZIP_MEMBERS:
        raise PersonaError(f"{where}: {entries} archive members, more than the {MAX_ZIP_MEMBERS} allowed")
    if size > MAX_ZIP_DIRECTORY_BYTES:
        raise PersonaError(
            f"{where}: the archive's central directory is {size} bytes,"
            f" more than the {MAX_ZIP_DIRECTORY_BYTES} allowed"
        )


def read_charx(data: bytes, where: str) -> tuple[Any, bytes | None]:
    """(parsed card.json, main icon PNG bytes or None) from a CHARX archive."""
    _check_directory(data, where)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_ERRORS as exc:
        raise PersonaError(f"{where}: not a valid CHARX (zip) file: {exc}") from exc
    with archive:
        try:
            return _read_members(archive, where)
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            ValueError,
            OSError,
            EOFError,
            NotImplementedError,
            zlib.error,
            lzma.LZMAError,
        ) as exc:
            raise PersonaError(f"{where}: corrupt CHARX archive: {exc}") from exc


def _read_members(archive: zipfile.ZipFile, where: str) -> tuple[Any, bytes | None]:
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise PersonaError(f"{where}: {len(infos)} archive members, more than the {MAX_ZIP_MEMBERS} allowed")
    declared = 0
    for info in infos:
        _check_name(info.filename, where)
        declared += info.file_size
        if info.flag_bits & 0x1:
            raise PersonaError(f"{where}: encrypted archives are not supported ({info.filename})")
    if declared > MAX_ZIP_TOTAL_BYTES:
        raise PersonaError(f"{where}: archive inflates to {declared} bytes, more than {MAX_ZIP_TOTAL_BYTES}")
    by_name = {info.filename: info for info in infos}
    card_info = by_name.get(CARD_MEMBER)
    if card_info is None:
        raise PersonaError(f"{where}: no {CARD_MEMBER} at the root of the CHARX archive")
    budget = _Budget()
    card = parse_json(budget.read(archive, card_info, MAX_TEXT_BYTES, where), f"{where}: {CARD_MEMBER}")
    icon_name = _main_icon(card)
    icon_info = by_name.get(icon_name) if icon_name else None
    if icon_info is None:
        return card, None
    icon = budget.read(archive, icon_info, MAX_FILE_BYTES, where)
    return card, icon if icon.startswith(SIGNATURE) else None


def _main_icon(card: Any) -> str | None:
    """The archive path of the card's main icon, if it names an embedded one."""
    assets = card_assets(card) or []
    index = main_icon_index(assets)
    return None if index is None else embedded_path(assets[index])
