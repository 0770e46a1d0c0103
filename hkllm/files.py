"""Files every stage shares: atomic writes, one JSON Lines reader, one stable hash.

    write_atomic(path, text)                 # readers see the old file or the new one, never half
    for lineno, record in read_jsonl(path):  # a bad line is a UserError "path:12: not valid JSON (…)"
    stable_hash("split:" + doc_id)           # the same 64-bit number on every machine, run and Python

Nothing here imports the rest of hkllm (apart from errors) or a third-party package: it sits at
the bottom of the layers (tests/test_layering.py), so training and evaluation need not import datatrove
to hash a string.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from hkllm.errors import UserError


def write_atomic(path: str | Path, text: str) -> None:
    """Readers see the old file or the new one, never a partial write."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def stable_hash(text: str) -> int:
    """A 64-bit hash of the text that never changes (unlike hash(), salted per process): data-build
    splits and fingerprints, sample order and caps are drawn from it, so changing it would move
    every existing build's documents between train and held-out."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class JsonlError(UserError):
    """A line of a JSON Lines file that does not decode or is not JSON: `name:lineno: reason`.
    `cause` is the UnicodeDecodeError or json.JSONDecodeError behind it."""

    def __init__(self, name: str, lineno: int, reason: str, cause: Exception):
        super().__init__(f"{name}:{lineno}: {reason}")
        self.name, self.lineno, self.reason, self.cause = name, lineno, reason, cause


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str | UnicodeDecodeError]]:
    """(line number, text or the decoding error) for each line of the file."""
    if "a\nb".encode(encoding).endswith(b"a\nb"):
        # An ASCII-compatible codec (UTF-8, Big5-HKSCS, GB18030, …): no multi-byte character holds
        # the byte 0x0a, so each line decodes on its own and one bad line spoils only itself.
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    yield lineno, raw.decode(encoding)
                except UnicodeDecodeError as e:
                    yield lineno, e
        return
    data = path.read_bytes()  # UTF-16 and the like: decoded whole, then split
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        yield data[: e.start].decode(encoding, "replace").count("\n") + 1, e  # the rest cannot be read
        return
    yield from enumerate(text.split("\n"), start=1)


def read_jsonl(path: str | Path, *, name: str | None = None, encoding: str = "utf-8-sig",
               on_error: Callable[[JsonlError], None] | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, record) for each non-blank line of a JSON Lines file, lines counted from 1.

    A line that does not decode in `encoding` or does not parse raises JsonlError, a UserError
    naming `name:line` (name defaults to the path) and the reason. Given `on_error`, the error is
    handed to it instead and the line skipped: for readers that count malformed records and go
    on (on_error may also raise). The default codec, utf-8-sig, reads plain UTF-8 and drops a
    byte-order mark.
    """
    path = Path(path)
    name = str(path) if name is None else name
    for lineno, line in _lines(path, encoding):
        if isinstance(line, UnicodeDecodeError):
            bad = line.object[line.start]
            error = JsonlError(name, lineno, f"not valid {encoding} ({line.reason}, byte 0x{bad:02x})", line)
        else:
            if lineno == 1:
                line = line.lstrip("\ufeff")  # a byte-order mark under a codec that keeps it (plain utf-8)
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))  # so that an error's column is on this line
            except json.JSONDecodeError as e:
                error = JsonlError(name, lineno, f"not valid JSON ({e.msg}, column {e.colno})", e)
            else:
                yield lineno, record
                continue
        if on_error is None:
            raise error
        on_error(error)
