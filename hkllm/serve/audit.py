"""The audit log: one SQLite row per request, prompts stored only after redaction.

    hkllm audit export --db hkllm-serve/audit.sqlite --since 2026-11-01 > audit.jsonl

Rows are written by a background thread so a slow disk never delays an answer; `close()`
flushes what is queued. Prompts pass through `hkllm.text.redact` (HKID, phone, e-mail, card
numbers) before they are stored, or are not stored at all with `--no-audit-prompts`.
"""

from __future__ import annotations

import queue
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from hkllm.serve.keys import connect

FIELDS = ("time", "request_id", "key_id", "endpoint", "model", "model_version", "status", "prompt_tokens",
          "completion_tokens", "latency_ms", "ttft_ms", "cache_hit", "finish_reason", "prompt")
SCHEMA = (f"CREATE TABLE IF NOT EXISTS requests ({', '.join(FIELDS)})",
          "CREATE INDEX IF NOT EXISTS requests_time ON requests(time)")


class AuditLog:
    def __init__(self, path: str | Path, store_prompts: bool = True):
        self.path, self.store_prompts = Path(path), store_prompts
        db = connect(self.path)
        for stmt in SCHEMA:
            db.execute(stmt)
        db.close()
        self._queue: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write, name="hkllm-audit", daemon=True)
        self._writer.start()

    def log(self, **record) -> None:
        from hkllm.text.redact import redact

        prompt = record.get("prompt")
        record["prompt"] = redact(prompt) if (prompt and self.store_prompts) else None
        self._queue.put(tuple(record.get(f) for f in FIELDS))

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join()

    def _write(self) -> None:
        db = connect(self.path)
        insert = f"INSERT INTO requests VALUES ({','.join('?' * len(FIELDS))})"
        while True:
            rows = [self._queue.get()]
            while not self._queue.empty():     # one transaction for whatever has piled up
                rows.append(self._queue.get())
            done = None in rows
            with db:
                db.executemany(insert, [r for r in rows if r is not None])
            if done:
                return


def parse_time(text: str) -> float:
    """ISO date or date-time (UTC when no zone is given) → Unix seconds."""
    dt = datetime.fromisoformat(text)
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def export(path: str | Path, since: float | None = None, until: float | None = None) -> Iterator[dict]:
    db = connect(path)
    rows = db.execute(f"SELECT {', '.join(FIELDS)} FROM requests WHERE time >= ? AND time < ? ORDER BY time",
                      (since or 0.0, until or float("inf")))
    for row in rows:
        record = dict(zip(FIELDS, row))
        record["time"] = datetime.fromtimestamp(record["time"], timezone.utc).isoformat()
        record["cache_hit"] = bool(record["cache_hit"])
        yield record
