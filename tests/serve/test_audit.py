"""The audit log's hash chain: each kind of tampering is named at the row where it happened.

    nice .venv/bin/pytest -q tests/serve/test_audit.py
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from hkllm.serve.audit import FIELDS, AuditLog, export, row_hash, verify

OLD_FIELDS = FIELDS[:FIELDS.index("watermark")]      # the schema before watermark/guards/chain
GUARDS = [{"guard": "pii", "verdict": "redact", "score": 0.75, "note": "電話"}]


def record(i: int, **extra) -> dict:
    return dict(time=1_800_000_000.0 + i / 3, request_id=f"r{i}", key_id="key_a", endpoint="/v1/chat/completions",
                model="m", model_version="v1", status=200, prompt_tokens=i, completion_tokens=2, latency_ms=12.5 + i,
                ttft_ms=0.1 * i, cache_hit=i % 2 == 0, finish_reason="stop", prompt=f"你好 {i}", **extra)


def write(path, n: int, **extra) -> None:
    log = AuditLog(path)
    for i in range(1, n + 1):
        log.log(**record(i, **extra))
    log.close()


def sql(path, statement: str, params=()) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(statement, params)
    db.close()


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "audit.sqlite"
    write(path, 5, watermark="wm-abc123", guards=GUARDS)
    return path


def test_intact_log_verifies_and_round_trips_new_fields(db):
    report = verify(db)
    assert report["ok"] and report["rows"] == 5 and report["legacy_rows"] == 0 and report["first_problem"] is None
    assert report["head"]["seq"] == 5 and len(report["head"]["hash"]) == 64
    rows = list(export(db))
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["hash"] == report["head"]["hash"]
    assert rows[0]["watermark"] == "wm-abc123" and rows[0]["guards"] == GUARDS and rows[1]["cache_hit"] is True


def test_chain_continues_across_restarts_and_none_stays_null(db):
    write(db, 2)          # a second server run on the same file: watermark off, no guards
    report = verify(db)
    assert report["ok"] and report["head"]["seq"] == 7
    last = max(export(db), key=lambda r: r["seq"])       # export orders by time; these reuse earlier times
    assert last["watermark"] is None and last["guards"] is None
    assert sqlite3.connect(db).execute("SELECT count(*) FROM requests WHERE guards IS NULL").fetchone() == (2,)


def test_hash_is_the_documented_encoding(db):
    row = sqlite3.connect(db).execute(f"SELECT seq, prev_hash, hash, {', '.join(FIELDS)} FROM requests "
                                      "WHERE seq = 1").fetchone()
    assert row[1] == "0" * 64 and row_hash(row[0], row[1], row[3:]) == row[2]


def test_edited_value_is_altered_at_that_row(db):
    sql(db, "UPDATE requests SET completion_tokens = 999 WHERE seq = 3")
    problem = verify(db)["first_problem"]
    assert not verify(db)["ok"] and problem["kind"] == "altered" and problem["seq"] == 3


def test_rewritten_row_with_recomputed_hash_breaks_the_next_link(db):
    row = sqlite3.connect(db).execute(f"SELECT prev_hash, {', '.join(FIELDS)} FROM requests WHERE seq = 3").fetchone()
    values = list(row[1:])
    values[FIELDS.index("status")] = 500
    sql(db, "UPDATE requests SET status = 500, hash = ? WHERE seq = 3", (row_hash(3, row[0], values),))
    problem = verify(db)["first_problem"]
    assert problem["seq"] == 4 and problem["kind"] == "inserted" and "recomputed" in problem["detail"]


def forge(path, seq: int, prev: str) -> int:
    """Insert a self-consistent row claiming `seq`, as someone who knows the encoding would; its rowid."""
    values = [int(v) if isinstance(v, bool) else v for v in record(99).values()] + ["wm-abc123", None]
    cols = ", ".join(FIELDS + ("seq", "prev_hash", "hash"))
    sql(path, f"INSERT INTO requests ({cols}) VALUES ({','.join('?' * (len(FIELDS) + 3))})",
        (*values, seq, prev, row_hash(seq, prev, values)))
    return sqlite3.connect(path).execute("SELECT max(rowid) FROM requests").fetchone()[0]


def test_forged_row_with_a_repeated_seq_is_inserted(db):
    prev = sqlite3.connect(db).execute("SELECT prev_hash FROM requests WHERE seq = 3").fetchone()[0]
    forged = forge(db, 3, prev)
    problem = verify(db)["first_problem"]
    assert problem["kind"] == "inserted" and problem["seq"] == 3 and problem["rowid"] == forged


def test_row_appended_without_updating_the_head_is_inserted(db):
    forged = forge(db, 6, verify(db)["head"]["hash"])
    problem = verify(db)["first_problem"]
    assert problem["kind"] == "inserted" and problem["seq"] == 6 and problem["rowid"] == forged


def test_row_without_chain_columns_after_the_chain_began_is_inserted(db):
    sql(db, "INSERT INTO requests (time, status) VALUES (1.0, 200)")
    problem = verify(db)["first_problem"]
    assert problem["kind"] == "inserted" and problem["seq"] is None and problem["rowid"] == 6


def test_missing_head_is_reported(db):
    sql(db, "DELETE FROM chain_head")
    assert verify(db)["first_problem"]["kind"] == "truncated"


def test_deleted_middle_row_is_deleted(db):
    sql(db, "DELETE FROM requests WHERE seq = 2")
    problem = verify(db)["first_problem"]
    assert problem["kind"] == "deleted" and problem["seq"] == 3 and "seq 2 missing" in problem["detail"]


def test_deleted_last_rows_are_truncated(db):
    sql(db, "DELETE FROM requests WHERE seq >= 4")
    problem = verify(db)["first_problem"]
    assert problem["kind"] == "truncated" and problem["seq"] == 5 and "seq 4–5" in problem["detail"]


def test_anchor_catches_what_the_head_cannot(db):
    anchor = (5, verify(db)["head"]["hash"])
    sql(db, "DELETE FROM requests WHERE seq = 5")
    sql(db, "UPDATE chain_head SET seq = 4, hash = (SELECT hash FROM requests WHERE seq = 4)")
    assert verify(db)["ok"]          # a consistent cut: only an anchor kept elsewhere shows it
    problem = verify(db, anchor)["first_problem"]
    assert problem["kind"] == "truncated" and problem["seq"] == 5


def test_legacy_file_keeps_working(tmp_path):
    path = tmp_path / "audit.sqlite"
    sql(path, f"CREATE TABLE requests ({', '.join(OLD_FIELDS)})")
    for i in (1, 2, 3):
        sql(path, f"INSERT INTO requests VALUES ({','.join('?' * len(OLD_FIELDS))})",
            tuple(record(i)[f] for f in OLD_FIELDS))
    assert verify(path) == {"ok": True, "rows": 3, "legacy_rows": 3, "first_problem": None, "head": None}
    assert len(list(export(path))) == 3
    write(path, 2, watermark="wm-x")
    report = verify(path)
    assert report["ok"] and report["rows"] == 5 and report["legacy_rows"] == 3 and report["head"]["seq"] == 2
    seqs = sorted((r["seq"] or 0, r["watermark"], r["guards"]) for r in export(path))
    assert seqs == [(0, None, None)] * 3 + [(1, "wm-x", None), (2, "wm-x", None)]
    sql(path, "UPDATE requests SET status = 404 WHERE seq = 1")
    assert verify(path)["first_problem"]["kind"] == "altered"


def test_cli_exit_status(db, tmp_path, capsys):
    from hkllm.cli import main

    state = str(db.parent)
    assert main(["audit", "verify", "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert "審計記錄完整" in out and "5 rows" in out
    assert main(["audit", "--state-dir", state, "verify", "--json"]) == 0
    head = json.loads(capsys.readouterr().out)["head"]
    assert main(["audit", "verify", "--state-dir", state, "--anchor", "7:" + head["hash"]]) == 1
    assert "truncated" in capsys.readouterr().out
    sql(db, "UPDATE requests SET prompt = 'x' WHERE seq = 2")
    assert main(["audit", "verify", "--state-dir", state]) == 1
    assert "altered at seq 2" in capsys.readouterr().out
    assert main(["audit", "verify", "--state-dir", str(tmp_path / "nowhere")]) == 2      # a UserError
    assert "no audit log here" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "audit.sqlite").write_bytes(b"not sqlite at all" * 100)
    assert main(["audit", "verify", "--state-dir", str(tmp_path / "junk")]) == 2
    assert "not an audit log" in capsys.readouterr().err


def test_cli_as_a_process(db):
    run = subprocess.run([sys.executable, "-m", "hkllm.cli", "audit", "verify", "--state-dir", str(db.parent)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    sql(db, "DELETE FROM requests WHERE seq = 3")
    run = subprocess.run([sys.executable, "-m", "hkllm.cli", "audit", "verify", "--state-dir", str(db.parent)],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "deleted" in run.stdout
