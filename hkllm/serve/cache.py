"""The consistency cache: the same request answers the same, from SQLite, until its TTL ends.

The key covers everything that decides an answer: model version (weights fingerprint), chat
template version, endpoint, the normalized messages or prompt, and the decoding parameters.
Normalization is deliberately light (Unicode NFC, surrounding whitespace): two prompts that a
tokenizer would see differently must not share an answer.
"""

from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from pathlib import Path

from hkllm.serve.keys import connect

SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, created REAL NOT NULL, body TEXT NOT NULL)"


def normalize(value):
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value).strip()
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in sorted(value.items())}
    return value


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(normalize(parts), ensure_ascii=False, sort_keys=True).encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path, ttl_s: float):
        self.ttl_s = ttl_s
        self.db = connect(path)
        self.db.execute(SCHEMA)

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT created, body FROM responses WHERE key=?", (key,)).fetchone()
        if not row or time.time() - row[0] > self.ttl_s:
            return None
        return json.loads(row[1])

    def put(self, key: str, value: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO responses VALUES (?,?,?)",
                        (key, time.time(), json.dumps(value, ensure_ascii=False)))

    def purge_expired(self) -> int:
        return self.db.execute("DELETE FROM responses WHERE created < ?", (time.time() - self.ttl_s,)).rowcount
