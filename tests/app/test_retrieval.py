"""Retrieval: tokens, passages with offsets, search with `[n]` numbers on two-character Chinese
terms (which SQLite's trigram tokenizer cannot find), quotes, unreadable text, owners and expiry."""

from __future__ import annotations

import io
import sqlite3
import zipfile
from pathlib import Path

import pytest

from hkllm.app.retrieval import (
    ExtractError,
    Library,
    UnreadableError,
    chunk,
    extract_text,
    index_tokens,
    query_tokens,
    readable,
    verify_quote,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data/demo/docs"
DAY = 86400.0


def test_tokens_are_hk_normalized_unigrams_bigrams_and_words():
    assert index_tokens("台风 Signal No.8") == ["颱", "風", "颱風", "signal", "no", "8"]
    assert query_tokens("颱風信號") == ["颱風", "風信", "信號"]
    assert query_tokens("水") == ["水"]
    assert query_tokens("裡面") == query_tokens("裏面")  # Taiwan and HK forms are one term


def test_chunks_keep_offsets_and_cut_at_sentence_ends():
    text = "第一段。\n\n" + "這是一個很長的句子，用來測試切分。" * 40 + "\n\nThe end."
    spans = chunk(text, size=100)
    assert all(e - s <= 100 for s, e in spans)
    assert all(text[s:e].strip() == text[s:e] for s, e in spans)
    assert all(text[e - 1] in "。." for s, e in spans)
    assert "".join(text[s:e] for s, e in spans).replace("\n", "") == text.replace("\n", "")


@pytest.fixture(scope="module")
def lib():
    lib = Library(":memory:")
    for path in sorted(DEMO.iterdir()):
        lib.add_file(path, owner="alice")
    return lib


@pytest.mark.parametrize("query, doc", [
    ("颱風", "notice_typhoon_zh-hant.html"),
    ("港鐵", "faq_mtr_yue.txt"),
    ("台风", "notice_typhoon_zh-hant.html"),  # Simplified input
    ("八號風球圖書館開唔開？", "notice_typhoon_zh-hant.html"),
    ("typhoon signal", "notice_typhoon_en.html"),
])
def test_search_finds_two_character_terms_and_numbers_citations(lib, query, doc):
    hits = lib.search(query, owner="alice", k=5)
    assert hits and [h.n for h in hits] == list(range(1, len(hits) + 1))
    assert doc in {h.doc_name for h in hits[:3]}
    top = hits[0]
    assert lib.passage(top.id, owner="alice").text == top.text
    full = extract_text(DEMO / top.doc_name)
    assert full[top.start:top.end] == top.text  # offsets point into the document's text


def test_fts5_trigram_finds_no_two_character_term():
    # why the index is ours: the trigram tokenizer cannot match a query shorter than three characters
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='trigram')")
    db.execute("INSERT INTO t VALUES ('當天文台發出八號颱風信號時')")
    assert db.execute("SELECT count(*) FROM t WHERE t MATCH '\"颱風\"'").fetchone()[0] == 0
    lib = Library()
    lib.add("n.txt", "當天文台發出八號颱風信號時，圖書館會暫停開放。", owner="a")
    assert len(lib.search("颱風", owner="a")) == 1


def test_verify_quote_after_normalization(lib):
    hit = next(h for h in lib.search("八號信號 公共圖書館", owner="alice") if h.doc_name == "notice_typhoon_zh-hant.html")
    assert verify_quote("公共圖書館及康樂設施會暫停開放", hit)
    assert verify_quote("公共图书馆及康乐设施会暂停开放", hit.text)  # Simplified quote of the same words
    assert verify_quote("「公共圖書館 及康樂設施」", hit.text)
    assert not verify_quote("公共圖書館照常開放", hit.text)
    assert not verify_quote("", hit.text)


@pytest.mark.parametrize("text, reason", [
    ("", "no text"),
    ("\ufffd\ufffd\ufffd 香港 \ufffd\ufffd\ufffd\ufffd 政府 \ufffd\ufffd", "replacement, private-use or control"),
    ("\ue000\ue001\ue002\ue003 通告 \ue004\ue005", "replacement, private-use or control"),
    ("(cid:1234)(cid:567)(cid:89)(cid:10)(cid:11)(cid:12) 2026", "font codes"),
    ("1234 5678 -- 90 // 12.5 %% ## 3", "almost no words"),
    ("Ã©Ã¨Ã  Ã¢â‚¬â„¢ Ã§Ã¹ Ã©Ã¨Ã  Ã¢â‚¬", "mojibake"),
])
def test_unreadable_text_is_refused_with_a_reason(text, reason):
    ok, why = readable(text)
    assert not ok and reason in why
    with pytest.raises(UnreadableError, match="bad.pdf: not indexed"):
        Library().add("bad.pdf", text, owner="a")


def test_real_documents_are_readable():
    for path in sorted(DEMO.iterdir()) + sorted((REPO / "data/app/docs").iterdir()):
        assert readable(extract_text(path)) == (True, ""), path.name


def test_owners_are_separate_and_expired_documents_are_purged(tmp_path):
    db = tmp_path / "lib.sqlite"
    lib = Library(db)
    now = 1_800_000_000.0
    old = lib.add("old.txt", "颱風期間圖書館暫停開放。", owner="alice", now=now - 31 * DAY)
    new = lib.add("new.txt", "颱風過後圖書館重新開放。", owner="alice", now=now)
    lib.add("bob.txt", "颱風期間泳池暫停開放。", owner="bob", now=now)
    assert {h.doc_name for h in lib.search("颱風", owner="bob", now=now)} == {"bob.txt"}
    assert {h.doc_name for h in lib.search("颱風", owner="alice", now=now)} == {"new.txt"}  # old one expired
    old_pid = lib.db.execute("SELECT id FROM passages WHERE doc_id = ?", (old,)).fetchone()[0]
    assert lib.passage(old_pid, owner="bob") is None  # another owner's passage does not open
    assert lib.purge_expired(now=now) == 1
    assert lib.db.execute("SELECT count(*) FROM documents WHERE id = ?", (old,)).fetchone()[0] == 0
    assert lib.db.execute("SELECT count(*) FROM passages WHERE doc_id = ?", (old,)).fetchone()[0] == 0
    assert lib.db.execute("SELECT count(*) FROM passages_fts WHERE rowid = ?", (old_pid,)).fetchone()[0] == 0
    assert [d.name for d in lib.documents(owner="alice")] == ["new.txt"]
    assert lib.documents(owner="alice")[0].expires == now + 30 * DAY  # the default expiry
    assert not lib.delete(new, owner="bob") and lib.delete(new, owner="alice")
    assert lib.search("颱風", owner="alice", now=now) == []
    lib.close()
    lib = Library(db)  # persistent
    assert [d.name for d in lib.documents(owner="bob")] == ["bob.txt"]


def _docx(paragraphs: list[str]) -> bytes:
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    body = "".join(f"<w:p><w:r><w:t>{p}</w:t></w:r></w:p>" for p in paragraphs)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>')
        z.writestr("word/document.xml", f'<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="{w}"><w:body>{body}</w:body></w:document>')
    return buf.getvalue()


def _pdf(text: str) -> bytes:
    """A one-page PDF showing `text` in Helvetica (built by hand: no PDF writer is installed)."""
    stream = f"BT /F1 12 Tf 10 50 Td ({text}) Tj ET"
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 100] /Contents 4 0 R "
            "/Resources << /Font << /F1 5 0 R >> >> >>",
            f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    return out + f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()


def test_extract_text_from_docx_html_text_and_pdf(tmp_path):
    assert extract_text("notice.pdf", _pdf("Typhoon Signal No. 8: libraries are closed.")) == \
        "Typhoon Signal No. 8: libraries are closed."
    assert extract_text("memo.docx", _docx(["便箋", "聖誕假期值班安排。"])) == "便箋\n\n聖誕假期值班安排。"
    html = extract_text(DEMO / "notice_typhoon_zh-hant.html")
    assert "八號烈風或暴風信號" in html and "主選單" not in html  # navigation stripped
    assert extract_text("a.txt", "香港".encode("big5hkscs")) == "香港"
    with pytest.raises(ExtractError, match="a.pdf: unreadable PDF"):
        extract_text("a.pdf", b"not a pdf")
    with pytest.raises(ExtractError, match="cannot read .xls"):
        extract_text("a.xls", b"")
    with pytest.raises(ExtractError, match="b.docx: unreadable DOCX"):
        extract_text("b.docx", b"not a zip")


def test_a_translated_query_crosses_languages(lib):
    english = "Are public libraries closed when typhoon signal 8 is hoisted?"
    assert "notice_typhoon_zh-hant.html" not in {h.doc_name for h in lib.search(english, owner="alice", k=5)}
    hits = lib.search(english, owner="alice", k=5, also=["八號颱風信號時公共圖書館會否暫停開放"])
    assert [h.n for h in hits] == list(range(1, len(hits) + 1))
    assert {"notice_typhoon_zh-hant.html", "notice_typhoon_en.html"} <= {h.doc_name for h in hits[:3]}


def test_the_benchmark_question_set_is_consistent(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_retrieval", REPO / "benchmarks/retrieval.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--json"]) == 0  # every question's answer lies in a passage of its document
    import json

    results = json.loads(capsys.readouterr().out)["results"]
    assert results["hkllm bigram"]["two_char"]["R@5"] > results["fts5 trigram"]["two_char"]["R@5"]


def test_purged_text_does_not_linger_in_the_database_file(tmp_path):
    path = tmp_path / "lib.sqlite"
    lib = Library(path)
    for i in range(10):
        lib.add(f"d{i}.txt", f"颱風期間圖書館暫停開放。 keep {i}", owner="a", now=1e9)
    lib.add("secret.txt", "機密文件 zebracrossingxyz 內容。" * 50, owner="a", now=1e9 - 31 * DAY)
    assert b"zebracrossingxyz" in path.read_bytes()
    assert lib.purge_expired(now=1e9) == 1
    lib.close()
    data = path.read_bytes()
    assert b"zebracrossingxyz" not in data and "機密".encode() not in data  # secure_delete + optimize
