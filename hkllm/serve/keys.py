"""API keys, stored hashed in SQLite: `hkllm keys create|list|revoke`.

A key is shown once, at creation (`hk-` + 32 random bytes in URL-safe base64). Only its
SHA-256 is stored: keys are long random strings, so a fast hash is enough (no password stretching
needed), and a stolen database gives no usable key. Each key may carry its own limits.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

# The folder of keys.sqlite, cache.sqlite and audit.sqlite: `hkllm serve`, `hkllm keys` and `hkllm audit`.
STATE_DIR = Path("hkllm-serve")

SCHEMA = """CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, created REAL NOT NULL,
    revoked REAL, rpm INTEGER, tpm INTEGER)"""


@dataclass
class Key:
    id: str
    name: str
    created: float
    revoked: float | None
    rpm: int | None            # requests per minute; None = the server's default
    tpm: int | None            # tokens (prompt + completion) per minute


def connect(path: str | Path) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")     # readers (the server) never block the CLI's writes
    return db


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: str | Path):
        self.db = connect(path)
        self.db.execute(SCHEMA)

    def create(self, name: str, rpm: int | None = None, tpm: int | None = None) -> tuple[Key, str]:
        secret = "hk-" + secrets.token_urlsafe(32)
        key = Key(id="key_" + secrets.token_hex(6), name=name, created=time.time(), revoked=None, rpm=rpm, tpm=tpm)
        self.db.execute("INSERT INTO keys VALUES (?,?,?,?,?,?,?)",
                        (key.id, name, _hash(secret), key.created, None, rpm, tpm))
        return key, secret

    def list(self) -> list[Key]:
        rows = self.db.execute("SELECT id, name, created, revoked, rpm, tpm FROM keys ORDER BY created").fetchall()
        return [Key(*r) for r in rows]

    def revoke(self, id_or_name: str) -> int:
        """Revoke by key id or by name (all keys of that name); returns how many were revoked."""
        cur = self.db.execute("UPDATE keys SET revoked=? WHERE (id=? OR name=?) AND revoked IS NULL",
                              (time.time(), id_or_name, id_or_name))
        return cur.rowcount

    def lookup(self, secret: str) -> Key | None:
        """The live key with this secret, or None (unknown or revoked)."""
        row = self.db.execute("SELECT id, name, created, revoked, rpm, tpm FROM keys WHERE hash=? AND revoked IS NULL",
                              (_hash(secret),)).fetchone()
        return Key(*row) if row else None
