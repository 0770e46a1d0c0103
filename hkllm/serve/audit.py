"""The audit log: one SQLite row per request, prompts stored only after redaction, rows hash-chained.

    hkllm audit export --state-dir hkllm-serve --since 2026-11-01 > audit.jsonl
    hkllm audit verify --state-dir hkllm-serve            # exit 1 at the first altered/inserted/deleted row
    hkllm audit verify --state-dir hkllm-serve --anchor 1234:ab12...   # also check a head recorded earlier

Rows are written by a background thread so a slow disk never delays an answer; `close()`
flushes what is queued. Prompts pass through `hkllm.text.redact` (HKID, phone, e-mail, card
numbers) before they are stored, or are not stored at all with `--no-audit-prompts`. Each row
records the watermark config id in force (NULL when off) and the guard verdicts (JSON).

The chain. The writer numbers rows `seq` = 1, 2, 3… in insert order and stores
`prev_hash` (the previous row's `hash`; 64 zeros for seq 1) and

    hash = sha256(json.dumps([seq, prev_hash, *values], ensure_ascii=True, separators=(",", ":"))
                  .encode("ascii")).hexdigest()

where `values` are the row's FIELDS in FIELDS order, exactly as SQLite returns them: bools are
stored (and hashed) as 0/1, a NaN as null (SQLite keeps NaN as NULL), floats as Python's repr
(shortest round-trip, so re-reading a REAL gives the same text), `guards` as its stored JSON text.
Only the writer thread hashes, inside the transaction that inserts, so the chain is strictly
ordered even with several processes on one file. The transaction also updates the one-row table
`chain_head` (last seq + hash): deleting the newest rows leaves no gap in the chain, so without
the head a truncated tail would look intact.

What `verify` catches: a value edited without recomputing the hash ("altered"); a forged row
with a repeated seq, or one that does not link to its predecessor ("inserted"); a gap in seq
("deleted"); rows missing after the last one, per `chain_head` ("truncated"). What it cannot: the
hash has no secret, so someone with write access who recomputes every later hash and the head
leaves a self-consistent log. Trust therefore comes from an external anchor: record the head that
`verify` prints (seq + hash) somewhere the server cannot write — a ticket, a signed e-mail, a
WORM bucket — and pass it back with `--anchor SEQ:HASH`; any rewrite at or before that seq, or a
cut below it, then shows. Rows written by versions without the chain (NULL hash, before the first
chained row) are counted as "unchained legacy rows" and cannot be checked.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from hkllm.serve.keys import connect

FIELDS = ("time", "request_id", "key_id", "endpoint", "model", "model_version", "status", "prompt_tokens",
          "completion_tokens", "latency_ms", "ttft_ms", "cache_hit", "finish_reason", "prompt",
          "watermark", "guards")
CHAIN = ("seq", "prev_hash", "hash")
# Columns added after the first release, with their declared types; older files get them by ALTER TABLE.
ADDED = {"watermark": "TEXT", "guards": "TEXT", "seq": "INTEGER", "prev_hash": "TEXT", "hash": "TEXT"}
COLUMNS = FIELDS + CHAIN
ZERO = "0" * 64
UNCHAINED = "seq IS NULL AND prev_hash IS NULL AND hash IS NULL"


def row_hash(seq: int, prev_hash: str, values) -> str:
    """The chain hash of one row (the encoding is in the module docstring)."""
    text = json.dumps([seq, prev_hash, *values], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _stored(value):
    """`value` as SQLite will give it back, so the hash computed before the insert matches a re-read."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class AuditLog:
    def __init__(self, path: str | Path, store_prompts: bool = True):
        self.path, self.store_prompts = Path(path), store_prompts
        db = connect(self.path)
        db.execute("BEGIN IMMEDIATE")      # two servers starting on one old file: only one adds the columns
        cols = ", ".join(f"{c} {ADDED.get(c, '')}".strip() for c in COLUMNS)
        db.execute(f"CREATE TABLE IF NOT EXISTS requests ({cols})")
        have = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
        for col in COLUMNS:
            if col not in have:
                db.execute(f"ALTER TABLE requests ADD COLUMN {col} {ADDED.get(col, '')}")
        db.execute("CREATE INDEX IF NOT EXISTS requests_time ON requests(time)")
        db.execute("CREATE INDEX IF NOT EXISTS requests_seq ON requests(seq)")
        db.execute("CREATE TABLE IF NOT EXISTS chain_head "
                   "(id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL)")
        db.execute("COMMIT")
        db.close()
        self._queue: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write, name="hkllm-audit", daemon=True)
        self._writer.start()

    def log(self, **record) -> None:
        """One request: keyword arguments named as FIELDS (missing ones are NULL). `watermark` is the
        watermark config id or None; `guards` a JSON-serializable list of guard verdicts or None."""
        from hkllm.text.redact import redact

        prompt = record.get("prompt")
        record["prompt"] = redact(prompt) if (prompt and self.store_prompts) else None
        if record.get("watermark") is not None:
            record["watermark"] = str(record["watermark"])     # TEXT affinity would convert it, breaking the hash
        if record.get("guards") is not None:
            # default=str: an odd object in a verdict must not fail the request it describes
            record["guards"] = json.dumps(record["guards"], ensure_ascii=False, sort_keys=True, default=str)
        self._queue.put(tuple(_stored(record.get(f)) for f in FIELDS))

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join()

    def _write(self) -> None:
        db = connect(self.path)
        insert = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"
        while True:
            rows = [self._queue.get()]
            while not self._queue.empty():     # one transaction for whatever has piled up
                rows.append(self._queue.get())
            done = None in rows
            rows = [r for r in rows if r is not None]
            if rows:
                # The head is read under the write lock, so another process's rows chain in between, not beside.
                db.execute("BEGIN IMMEDIATE")
                try:
                    seq, prev = _head(db) or (0, ZERO)
                    chained = []
                    for values in rows:
                        seq += 1
                        digest = row_hash(seq, prev, values)
                        chained.append((*values, seq, prev, digest))
                        prev = digest
                    db.executemany(insert, chained)
                    db.execute("INSERT OR REPLACE INTO chain_head (id, seq, hash) VALUES (1, ?, ?)", (seq, prev))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            if done:
                return


def _head(db) -> tuple[int, str] | None:
    """The recorded chain head; else (a file from before chain_head, or one whose head row was
    removed) the last chained row, so the chain continues rather than restarting at seq 1."""
    row = db.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()
    return row or db.execute("SELECT seq, hash FROM requests WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1").fetchone()


def parse_time(text: str) -> float:
    """ISO date or date-time (UTC when no zone is given) → Unix seconds."""
    dt = datetime.fromisoformat(text)
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def export(path: str | Path, since: float | None = None, until: float | None = None) -> Iterator[dict]:
    db = connect(path)
    have = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    # A file never opened by this version lacks the new columns: export them as null rather than fail.
    cols = ", ".join(c if c in have else f"NULL AS {c}" for c in FIELDS + ("seq", "hash"))
    rows = db.execute(f"SELECT {cols} FROM requests WHERE time >= ? AND time < ? ORDER BY time",
                      (since or 0.0, until or float("inf")))
    for row in rows:
        record = dict(zip(FIELDS + ("seq", "hash"), row))
        record["time"] = datetime.fromtimestamp(record["time"], timezone.utc).isoformat()
        record["cache_hit"] = bool(record["cache_hit"])
        record["guards"] = None if record["guards"] is None else json.loads(record["guards"])
        yield record


def verify(path: str | Path, anchor: tuple[int, str] | None = None) -> dict:
    """Walk the chain in seq order and report the first problem (see the module docstring).

    anchor: (seq, hash) recorded earlier from outside; the row at that seq must still have that hash.
    Returns {"ok", "rows" (all rows), "legacy_rows", "first_problem": {"seq", "rowid", "kind", "detail"}
    or None, "head": {"seq", "hash"} or None}. Problems in the chain are reported before unchained
    rows found after the chain began."""
    db = connect(path)
    db.execute("BEGIN")        # one snapshot: the server may be appending while we read
    try:
        return _verify(db, anchor)
    finally:
        db.execute("ROLLBACK")
        db.close()


def _verify(db, anchor) -> dict:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    head = None
    if "chain_head" in tables and (row := db.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()):
        head = {"seq": row[0], "hash": row[1]}
    result = {"ok": True, "rows": 0, "legacy_rows": 0, "first_problem": None, "head": head}
    have = set()
    if "requests" in tables:
        have = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
        result["rows"] = db.execute("SELECT count(*) FROM requests").fetchone()[0]
    if not set(COLUMNS) <= have:           # never opened by a chaining version: everything is legacy
        result["legacy_rows"] = result["rows"]
        problem = _check_tail(0, head, anchor)
        return {**result, "ok": problem is None, "first_problem": problem}

    first = db.execute(f"SELECT min(rowid) FROM requests WHERE NOT ({UNCHAINED})").fetchone()[0]
    result["legacy_rows"] = db.execute(f"SELECT count(*) FROM requests WHERE {UNCHAINED} AND rowid < ?",
                                       (2**63 - 1 if first is None else first,)).fetchone()[0]
    if head is None and first is not None:
        problem = _problem(None, None, "truncated", "chain_head is missing, so rows cut from the end cannot be ruled "
                                                    "out; compare with an anchor you recorded")
        return {**result, "ok": False, "first_problem": problem}

    # (seq, hash, who says so): the row at that seq must have that hash
    points = [(*anchor, "the anchor")] if anchor else []
    if head:
        points.append((head["seq"], head["hash"], "chain_head"))
    rows = db.execute(f"SELECT rowid, seq, prev_hash, hash, {', '.join(FIELDS)} FROM requests "
                      f"WHERE NOT ({UNCHAINED}) ORDER BY seq, rowid")
    problem, last = _walk(rows, points, head and head["seq"])
    if problem is None:
        problem = _check_tail(last, head, anchor)
    if problem is None and first is not None:
        row = db.execute(f"SELECT rowid FROM requests WHERE {UNCHAINED} AND rowid > ? ORDER BY rowid LIMIT 1",
                         (first,)).fetchone()
        if row:
            problem = _problem(None, row[0], "inserted", "a row without seq/hash after the chain began")
    return {**result, "ok": problem is None, "first_problem": problem}


def _problem(seq, rowid, kind, detail) -> dict:
    return {"seq": seq, "rowid": rowid, "kind": kind, "detail": detail}


def _walk(rows, points, head_seq) -> tuple[dict | None, int]:
    """The first problem among chained rows (ordered by seq, rowid), and the last seq checked."""
    expected, prev = 1, ZERO
    for group in _grouped(rows):
        rowid, seq = group[0][:2]
        if not isinstance(seq, int):
            kind = "altered" if seq is None else "inserted"
            return _problem(seq, rowid, kind, f"seq {seq!r} is not a number the writer assigns"), expected - 1
        if seq != expected:
            missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}–{seq - 1}"
            return _problem(seq, rowid, "deleted", f"{missing} missing before this row"), expected - 1
        row = _genuine(group, prev)
        if len(group) > 1:
            extra = min((r for r in group if r is not row), key=lambda r: r[0])
            return _problem(seq, extra[0], "inserted", f"{len(group)} rows share seq {seq}"), expected - 1
        rowid, seq, prev_hash, digest = row[:4]
        if row_hash(seq, prev_hash, row[4:]) != digest:
            return _problem(seq, rowid, "altered", "the row's content no longer matches its hash"), expected - 1
        if prev_hash != prev:
            return _problem(seq, rowid, "inserted",
                            f"self-consistent, but prev_hash {str(prev_hash)[:12]}… is not seq {seq - 1}'s hash "
                            f"{prev[:12]}…: a forged row, or seq {seq - 1} rewritten with a recomputed hash"), \
                expected - 1
        for at, want, name in points:
            if at == seq and want != digest:
                return _problem(seq, rowid, "altered", f"hash {digest[:12]}… differs from {name}'s {want[:12]}…: "
                                                       "rewritten with recomputed hashes"), expected - 1
        if head_seq is not None and seq > head_seq:
            return _problem(seq, rowid, "inserted", f"after chain_head's seq {head_seq}: appended without "
                                                    "updating the head"), expected - 1
        expected, prev = seq + 1, digest
    return None, expected - 1


def _grouped(rows):
    """Consecutive rows with the same seq, as lists (the query orders by seq)."""
    group = []
    for row in rows:
        if group and row[1] != group[0][1]:
            yield group
            group = []
        group.append(row)
    if group:
        yield group


def _genuine(group, prev):
    """Of rows sharing a seq, the one the writer made: it links to `prev` and matches its own hash."""
    for row in group:
        if row[2] == prev and row_hash(row[1], row[2], row[4:]) == row[3]:
            return row
    return group[0]


def _check_tail(last_seq, head, anchor) -> dict | None:
    """Rows missing after the last chained one, per chain_head or the anchor."""
    for point, name in ((head and (head["seq"], head["hash"]), "chain_head"), (anchor, "the anchor")):
        if point and last_seq < point[0]:
            cut = f"seq {last_seq + 1}–{point[0]}" if last_seq + 1 < point[0] else f"seq {point[0]}"
            return _problem(point[0], None, "truncated", f"{cut} missing at the end ({name} is at seq {point[0]})")
    return None
