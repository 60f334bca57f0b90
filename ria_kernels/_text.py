"""Reading calibration / evaluation text files strictly (no torch import: the CLI checks its
text files before loading anything).

Bytes that are not valid in the given encoding are an error naming the file and the byte
offset, never silently replaced: a Latin-1 file read as UTF-8 with ``errors="replace"``
gives a perplexity of tens of thousands that looks like a result, and random bytes
"calibrate" normally.
"""
from __future__ import annotations

import codecs
import os
from pathlib import Path

from ._errors import RiaInputError

DEFAULT_ENCODING = "utf-8"


def check_encoding(encoding: str, flag: str = "encoding") -> str:
    """The codec's canonical name, or RiaInputError naming ``flag`` for an unknown one."""
    try:
        return codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise RiaInputError(f"{flag}: unknown text encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None


def check_text_path(path: str | os.PathLike, flag: str = "text file") -> Path:
    """``path`` as a Path if it is an existing regular file; else one line saying what it is."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise RiaInputError(f"{flag} {path}: is a directory; give a text file")
    if not p.exists():
        raise RiaInputError(f"{flag}: text file not found: {path}")
    if not p.is_file():
        raise RiaInputError(f"{flag} {path}: not a regular file")
    return p


def read_text(path: str | os.PathLike, encoding: str = DEFAULT_ENCODING, flag: str | None = None) -> str:
    """The whole text of ``path`` decoded strictly with ``encoding``. RiaInputError (naming ``flag``
    or the file) for a directory, a missing file, undecodable bytes (with their byte offset) or
    a file with no text."""
    name = flag or "text file"
    p = check_text_path(path, name)
    encoding = check_encoding(encoding, "--text-encoding" if flag else "encoding")
    data = p.read_bytes()
    try:
        text = data.decode(encoding)  # strict: never replace bad bytes
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.end][:4].hex(" ")
        raise RiaInputError(f"{name} {path}: not valid {encoding} text at byte offset {exc.start} (byte(s) {bad}: "
                            f"{exc.reason}); pass --text-encoding for another encoding") from None
    if "\x00" in text:  # a binary file that happens to decode (e.g. UTF-16 read as latin-1, random bytes)
        off = len(text[:text.index("\x00")].encode(encoding))
        raise RiaInputError(f"{name} {path}: NUL byte at byte offset {off}: this is not a text file "
                            f"(or not {encoding}; pass --text-encoding)")
    if not text.strip():
        raise RiaInputError(f"text file is empty: {path}" if not flag else f"{flag} {path}: text file is empty")
    return text


__all__ = ["read_text", "check_text_path", "check_encoding", "DEFAULT_ENCODING"]
