"""港文通's routes over HTTP (no browser): a summary beyond the context window, uploads and their
limits, ownership, CSRF, revoked keys, and every model call audited like /v1's."""

from __future__ import annotations

import json
import re
import sqlite3
import time

import httpx2 as httpx

LONG = "\n\n".join(f"第{i}段：本署於本年度推行多項社區計劃，包括長者服務、青少年活動及環境保育，"
                   f"並定期檢討成效，確保公帑用得其所。市民可於各區民政事務處查詢詳情。" for i in range(1, 80))


def client(server) -> tuple[httpx.Client, dict]:
    c = httpx.Client(base_url=server.url, timeout=60)
    page = c.get("/app")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    return c, {"X-CSRF-Token": csrf}


def events(response) -> list[tuple[str, dict]]:
    out = []
    for frame in response.text.strip().split("\n\n"):
        kind = re.search(r"^event: (.*)$", frame, re.M).group(1)
        out.append((kind, json.loads(re.search(r"^data: (.*)$", frame, re.M).group(1))))
    return out


def test_a_summary_beyond_the_context_window_is_made_chunk_by_chunk(app_server):
    server = app_server()
    c, h = client(server)
    doc = c.post("/app/api/upload", content=LONG.encode(), headers={**h, "X-File-Name": "annual_report.txt"}).json()
    r = c.post("/app/api/run", json={"task": "summarize", "doc": str(doc["id"])}, headers=h)
    got = events(r)
    progress = [d for k, d in got if k == "progress"]
    kind, done = got[-1]
    assert kind == "done" and done["chunks"] >= 2 and done["rounds"] >= 2, done
    assert progress[0] == {"done": 0, "total": done["chunks"], "round": 1}
    engine = server.app.state.engine
    context = engine.max_model_len
    for messages in engine.seen:                     # every call fitted the model's context (chars/2 counted)
        assert sum(len(m["content"]) // 2 + 1 for m in messages) < context
    assert len(engine.seen) == done["chunks"] + 1 or done["rounds"] > 2


def test_uploads_their_limits_and_owners(app_server):
    server = app_server(app_max_upload_bytes=4096)
    c, h = client(server)
    r = c.post("/app/api/upload", content=b"x" * 5000, headers={**h, "X-File-Name": "big.txt"})
    assert r.status_code == 413
    r = c.post("/app/api/upload", content=b"hello", headers={**h, "X-File-Name": "script.exe"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_file"
    doc = c.post("/app/api/upload", content="市民可於網上預約。".encode() * 10,
                 headers={**h, "X-File-Name": "faq.txt"}).json()
    other, oh = client(server)                       # another browser: another anonymous owner
    assert other.post(f"/app/api/docs/{doc['id']}/delete", json={}, headers=oh).status_code == 404
    assert "faq.txt" not in other.get("/app/docs").text and "faq.txt" in c.get("/app/docs").text
    assert c.post(f"/app/api/docs/{doc['id']}/delete", json={}, headers=h).json() == {"deleted": doc["id"]}
    assert "faq.txt" not in c.get("/app/docs").text


def test_csrf_and_bad_requests(app_server):
    server = app_server()
    c, h = client(server)
    assert c.post("/app/api/run", json={"task": "rewrite", "text": "x"}).status_code == 403
    assert c.post("/app/api/run", json={"task": "rewrite", "text": "x"}, headers={"X-CSRF-Token": "forged"}
                  ).status_code == 403
    for body, param in (({"task": "poem"}, "task"), ({"task": "translate", "text": "abc", "target": "fr"}, None),
                        ({"task": "draft", "template": "letter_reply", "values": {}}, None)):
        r = c.post("/app/api/run", json=body, headers=h)
        assert r.status_code == 400 and r.json()["error"]["message"], r.text
        if param:
            assert r.json()["error"]["param"] == param
    r = c.post("/app/api/run", content=b"not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400


def test_a_revoked_key_ends_the_session_and_calls_are_audited(app_server, tmp_path):
    from hkllm.serve.keys import KeyStore

    state = tmp_path / "keys"
    server = app_server(state_dir=state, auth=True)
    store = KeyStore(state / "keys.sqlite")
    key, secret = store.create("officer")
    c = httpx.Client(base_url=server.url, timeout=60)
    form = c.get("/app/signin").text
    token = re.search(r'name="signin_token" value="([^"]+)"', form).group(1)
    r = c.post("/app/signin", content=f"signin_token={token}&lang=zh&key={secret}",
               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/app").text).group(1)
    r = c.post("/app/api/run", json={"task": "rewrite", "text": "佢哋今日唔得閒。"}, headers={"X-CSRF-Token": csrf})
    assert events(r)[-1][0] == "done"
    deadline = time.time() + 10
    while time.time() < deadline:
        rows = sqlite3.connect(state / "audit.sqlite").execute("SELECT key_id, endpoint, status FROM requests").fetchall()
        if rows:
            break
        time.sleep(0.05)
    assert rows == [(key.id, "chat", 200)]           # the app's call is the gateway's, audited as such
    store.revoke("officer")
    r = c.post("/app/api/run", json={"task": "rewrite", "text": "佢哋今日唔得閒。"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 401


def test_the_draft_form_shows_each_templates_example_greyed(app_server):
    from hkllm.app.templates import load_all

    c, _ = client(app_server())
    html = c.get("/app/draft").text
    for t in load_all().values():
        for f in (f for f in t.fields if f.type != "choice"):     # a choice is a <select>
            tag = re.search(rf'<(?:input|textarea) id="{t.id}-{f.name}"[^>]*>', html).group(0)
            if f.type in ("text", "multiline", "list") and f.example:
                hint = f.example if isinstance(f.example, str) else "\n".join(f.example)
                assert f'placeholder="{hint}"' in tag, tag
            else:
                assert "placeholder" not in tag, tag
    assert 'placeholder="HAD WC/13/25/3"' in html
