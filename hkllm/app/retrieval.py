"""Documents → passages → a search index, for answers that cite `[n]` passages.

    from hkllm.app.retrieval import Library, extract_text, readable, verify_quote
    lib = Library("runs/app/library.sqlite")                  # or ":memory:"
    doc = lib.add("颱風通告.html", extract_text("notice.html"), owner="key-1")   # 30-day expiry
    hits = lib.search("颱風 圖書館", owner="key-1", k=5)       # hits[0].n == 1 → cite as [1]
    verify_quote("圖書館會暫停開放", hits[0].text)            # True if the quote is in that passage

Why not SQLite's trigram tokenizer: it cannot match a query shorter than three characters, and most
Chinese words have two (颱風, 港鐵, 水費 find nothing). So the index is SQLite FTS5 over our own
tokens: text is first normalized to Hong Kong forms (OpenCC via `hkllm.text.convert`: 台风 and
颱風 are one term, 裡/裏 too), then every run of Han characters gives its unigrams and bigrams and
every Latin word or number is one lower-cased token. A query uses bigrams (a one-character run: its
unigram) and words, OR-ed, ranked by FTS5's BM25. `benchmarks/retrieval.py` measures it against the
trigram tokenizer.

Passages are ~400 characters, cut at paragraph and sentence ends (。！？；.!?), each with its start
and end offsets in the document text. Text that a PDF extracted as junk (replacement, private-use or
control characters, `(cid:12)` codes, no words) is refused by `readable()` rather than indexed.
Every document has an owner (the API key id that uploaded it) and an expiry (30 days by default);
`purge_expired()` deletes expired documents, their passages and their index rows, with SQLite's
secure_delete so the text does not linger in free pages.
"""

from __future__ import annotations

import re
import sqlite3
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from hkllm.errors import UserError

DEFAULT_TTL_DAYS = 30
PASSAGE_CHARS = 400

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_TOKEN = re.compile(rf"[{_HAN}]+|[^\W_]+", re.UNICODE)
_HAN_RUN = re.compile(rf"[{_HAN}]+")


class UnreadableError(UserError):
    """Text that is not worth indexing (garbled extraction, no words)."""


class ExtractError(UserError):
    """A file whose text cannot be extracted."""


# ---------------------------------------------------------------------------------------------
# Normalization and tokens


def normalize(text: str) -> str:
    """Hong Kong character forms (Simplified and Taiwan input mapped), widths folded, lower case."""
    from hkllm.text import convert

    return convert(text, to="hk").lower()


def _tokens(text: str, unigrams: bool) -> list[str]:
    out = []
    for m in _TOKEN.finditer(normalize(text)):
        run = m.group(0)
        if _HAN_RUN.fullmatch(run):
            if unigrams or len(run) == 1:
                out.extend(run)
            out.extend(run[i:i + 2] for i in range(len(run) - 1))
        else:
            out.append(run)
    return out


def index_tokens(text: str) -> list[str]:
    """What a passage is indexed by: Han unigrams and bigrams, lower-cased words and numbers."""
    return _tokens(text, unigrams=True)


def query_tokens(text: str) -> list[str]:
    """What a query searches for: Han bigrams (a lone character: itself) and words."""
    return _tokens(text, unigrams=False)


def _match_expression(tokens: list[str]) -> str:
    seen = dict.fromkeys(tokens)
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in seen)


# ---------------------------------------------------------------------------------------------
# Readability, chunking, quotes

_CID = re.compile(r"\(cid:\d+\)")
_WORD = re.compile(rf"[{_HAN}]|[A-Za-z]{{2,}}")


def readable(text: str) -> tuple[bool, str]:
    """(True, "") for real text; (False, reason) for what a broken PDF extraction gives."""
    if not text or not text.strip():
        return False, "the document has no text (a scan? run OCR first)"
    visible = [c for c in text if not c.isspace()]
    n = len(visible)
    bad = sum(1 for c in visible if c == "\ufffd" or unicodedata.category(c) in ("Co", "Cc", "Cs"))
    cid = len(_CID.findall(text))
    if cid >= 5 and cid * 8 > 0.2 * n:
        return False, f"the text is font codes such as (cid:12) ({cid} of them): the PDF has no Unicode map for its fonts"
    if bad > 0.05 * n:
        return False, (f"{bad / n:.0%} of the characters are replacement, private-use or control characters: "
                       "the PDF's fonts could not be decoded")
    latin1 = sum(1 for c in visible if "\u0080" <= c <= "\u00ff" or c in "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ")
    if latin1 > 0.2 * n and not re.search(rf"[{_HAN}]", text):
        return False, "the text looks like mis-decoded bytes (mojibake such as 'Ã©' or 'å…¬')"
    words = len(_WORD.findall(text))
    letters = sum(1 for c in visible if c.isalpha())
    if words < 3 or letters < 0.3 * n:
        return False, "the text has almost no words (symbols and numbers only)"
    return True, ""


_SENTENCE_END = re.compile(r"(?<=[。！？；!?\n])|(?<=[.;])\s")


def chunk(text: str, size: int = PASSAGE_CHARS) -> list[tuple[int, int]]:
    """(start, end) offsets of passages of at most ~`size` characters, cut at paragraph ends, then
    sentence ends; a paragraph shorter than a quarter of `size` joins the next one."""
    pieces: list[tuple[int, int]] = []
    for m in re.finditer(r"[^\n]+(?:\n(?!\s*\n)[^\n]+)*", text):  # paragraphs: blank-line separated
        start, end = m.start(), m.end()
        while end - start > size:
            window = text[start:start + size]
            cuts = [c.end() for c in _SENTENCE_END.finditer(window) if c.end() > size // 3]
            cut = start + (cuts[-1] if cuts else size)
            pieces.append((start, cut))
            start = cut
            while start < end and text[start].isspace():
                start += 1
        if end > start:
            pieces.append((start, end))
    merged: list[tuple[int, int]] = []
    for s, e in pieces:
        if merged and (merged[-1][1] - merged[-1][0] < size // 4) and e - merged[-1][0] <= size:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return [(s, e) for s, e in merged if text[s:e].strip()]


_QUOTE_STRIP = re.compile(r"[\s\u3000「」『』“”‘’\"'《》〈〉]+")


def _quote_form(text: str) -> str:
    return _QUOTE_STRIP.sub("", normalize(text))


def verify_quote(claim: str, passage: "str | Passage") -> bool:
    """True if `claim` (a quoted span) is in `passage`, after HK-form normalization, width and case
    folding, and ignoring whitespace and quotation marks."""
    text = passage.text if isinstance(passage, Passage) else passage
    q = _quote_form(claim)
    return bool(q) and q in _quote_form(text)


# ---------------------------------------------------------------------------------------------
# Text extraction


def extract_text(path: str | Path, data: bytes | None = None) -> str:
    """The text of a PDF, DOCX, HTML or text file (by its extension). DOCX uses python-docx when it
    is installed, else reads the document XML directly (paragraphs and table cells)."""
    path = Path(path)
    raw = data if data is not None else path.read_bytes()
    ext = path.suffix.lower()
    if ext == ".pdf":
        import io

        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        try:
            pages = [page.extract_text() or "" for page in PdfReader(io.BytesIO(raw)).pages]
        except (PdfReadError, OSError, ValueError) as e:
            raise ExtractError(f"{path.name}: unreadable PDF ({e})") from None
        return "\n\n".join(p.strip() for p in pages if p.strip())
    if ext == ".docx":
        return _docx_text(path.name, raw)
    if ext in (".html", ".htm"):
        import trafilatura

        page = _decode(path.name, raw)
        text = trafilatura.extract(page, include_comments=False, include_tables=True, favor_precision=True)
        if not text:
            raise ExtractError(f"{path.name}: no main text found in the HTML")
        return text
    if ext in (".txt", ".md", ".text", ""):
        return _decode(path.name, raw)
    raise ExtractError(f"{path.name}: cannot read {ext} files; upload PDF, DOCX, HTML or text")


def _decode(name: str, raw: bytes) -> str:
    for codec in ("utf-8-sig", "big5hkscs"):
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            continue
    raise ExtractError(f"{name}: the text is neither UTF-8 nor Big5-HKSCS")


def _docx_text(name: str, raw: bytes) -> str:
    import io
    import zipfile

    try:
        import docx  # python-docx

        document = docx.Document(io.BytesIO(raw))
        parts = [p.text for p in document.paragraphs]
        for table in document.tables:
            for row in table.rows:
                parts.append("\t".join(cell.text for cell in row.cells))
        return "\n\n".join(p for p in parts if p.strip())
    except ImportError:
        pass
    except Exception:  # python-docx is strict (a missing _rels/.rels, say); the XML reader below is not
        pass
    from xml.etree import ElementTree

    w = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            root = ElementTree.fromstring(z.read("word/document.xml"))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError) as e:
        raise ExtractError(f"{name}: unreadable DOCX ({e})") from None
    paragraphs = []
    for p in root.iter(f"{w}p"):
        text = "".join(t.text or "" if t.tag == f"{w}t" else "\t" if t.tag == f"{w}tab" else "\n"
                       for t in p.iter() if t.tag in (f"{w}t", f"{w}tab", f"{w}br"))
        if text.strip():
            paragraphs.append(text)
    return "\n\n".join(paragraphs)


# ---------------------------------------------------------------------------------------------
# The index


@dataclass(frozen=True)
class Passage:
    id: int
    doc_id: int
    doc_name: str
    seq: int  # its place in the document (0-based)
    start: int  # offsets in the document's text
    end: int
    text: str


@dataclass(frozen=True)
class Hit(Passage):
    n: int = 0  # 1-based citation number: cite as [n]
    score: float = 0.0  # BM25 (higher is better)


@dataclass(frozen=True)
class Document:
    id: int
    owner: str
    name: str
    created: float
    expires: float
    passages: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, text TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS documents_owner ON documents(owner);
CREATE INDEX IF NOT EXISTS documents_expires ON documents(expires);
CREATE TABLE IF NOT EXISTS passages (
    id INTEGER PRIMARY KEY, doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS passages_doc ON passages(doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS passages_fts USING fts5(tokens, tokenize = 'unicode61 remove_diacritics 0');
"""


class Library:
    """Per-owner documents in one SQLite file: add, search, cite, expire."""

    def __init__(self, path: str | Path = ":memory:", passage_chars: int = PASSAGE_CHARS):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA secure_delete = ON")
        self.db.executescript(_SCHEMA)
        self.passage_chars = passage_chars

    def close(self) -> None:
        self.db.close()

    def add(self, name: str, text: str, *, owner: str, ttl_days: float = DEFAULT_TTL_DAYS,
            now: float | None = None) -> int:
        """Index `text` as document `name` of `owner`; its id. Unreadable text raises UnreadableError."""
        ok, reason = readable(text)
        if not ok:
            raise UnreadableError(f"{name}: not indexed: {reason}")
        now = time.time() if now is None else now
        with self.db:
            doc_id = self.db.execute(
                "INSERT INTO documents(owner, name, text, created, expires) VALUES (?, ?, ?, ?, ?)",
                (owner, name, text, now, now + ttl_days * 86400)).lastrowid
            for seq, (start, end) in enumerate(chunk(text, self.passage_chars)):
                pid = self.db.execute('INSERT INTO passages(doc_id, seq, start, "end", text) VALUES (?, ?, ?, ?, ?)',
                                      (doc_id, seq, start, end, text[start:end])).lastrowid
                self.db.execute("INSERT INTO passages_fts(rowid, tokens) VALUES (?, ?)",
                                (pid, " ".join(index_tokens(text[start:end]))))
        return doc_id

    def add_file(self, path: str | Path, *, owner: str, data: bytes | None = None, **kwargs) -> int:
        return self.add(Path(path).name, extract_text(path, data), owner=owner, **kwargs)

    def search(self, query: str, *, owner: str, k: int = 5, now: float | None = None,
               also: tuple[str, ...] | list[str] = ()) -> list[Hit]:
        """The `k` best passages of `owner`'s unexpired documents, numbered 1… for `[n]` citations.

        `also`: the same question in other words or languages (the model's translation of an English
        question into Chinese, say: BM25 cannot cross languages); the rankings are merged by
        reciprocal rank fusion."""
        if also:
            runs = [self.search(q, owner=owner, k=k * 2, now=now) for q in (query, *also)]
            fused: dict[int, tuple[float, Hit]] = {}
            for run in runs:
                for rank, hit in enumerate(run):
                    score = fused.get(hit.id, (0.0, hit))[0] + 1 / (60 + rank + 1)
                    fused[hit.id] = (score, hit)
            best = sorted(fused.values(), key=lambda sh: -sh[0])[:k]
            return [Hit(*(getattr(h, f) for f in ("id", "doc_id", "doc_name", "seq", "start", "end", "text")),
                        n=i + 1, score=s) for i, (s, h) in enumerate(best)]
        tokens = query_tokens(query)
        if not tokens:
            return []
        now = time.time() if now is None else now
        rows = self.db.execute(
            """SELECT p.id, p.doc_id, d.name, p.seq, p.start, p."end", p.text, bm25(passages_fts) AS rank
               FROM passages_fts JOIN passages p ON p.id = passages_fts.rowid JOIN documents d ON d.id = p.doc_id
               WHERE passages_fts MATCH ? AND d.owner = ? AND d.expires > ?
               ORDER BY rank LIMIT ?""", (_match_expression(tokens), owner, now, k)).fetchall()
        return [Hit(*row[:7], n=i + 1, score=-row[7]) for i, row in enumerate(rows)]

    def passage(self, passage_id: int, *, owner: str) -> Passage | None:
        """One passage (what `[n]` opens), or None if it is not this owner's."""
        row = self.db.execute(
            """SELECT p.id, p.doc_id, d.name, p.seq, p.start, p."end", p.text FROM passages p
               JOIN documents d ON d.id = p.doc_id WHERE p.id = ? AND d.owner = ?""", (passage_id, owner)).fetchone()
        return Passage(*row) if row else None

    def text(self, doc_id: int, *, owner: str) -> tuple[str, str] | None:
        """(name, whole text) of one of `owner`'s documents, or None."""
        row = self.db.execute("SELECT name, text FROM documents WHERE id = ? AND owner = ?", (doc_id, owner)).fetchone()
        return tuple(row) if row else None

    def documents(self, *, owner: str) -> list[Document]:
        rows = self.db.execute(
            """SELECT d.id, d.owner, d.name, d.created, d.expires, COUNT(p.id) FROM documents d
               LEFT JOIN passages p ON p.doc_id = d.id WHERE d.owner = ? GROUP BY d.id ORDER BY d.id""",
            (owner,)).fetchall()
        return [Document(*r) for r in rows]

    def _delete(self, doc_ids: list[int]) -> int:
        if not doc_ids:
            return 0
        marks = ",".join("?" * len(doc_ids))
        with self.db:
            self.db.execute(f"DELETE FROM passages_fts WHERE rowid IN (SELECT id FROM passages WHERE doc_id IN ({marks}))",
                            doc_ids)
            self.db.execute(f"DELETE FROM passages WHERE doc_id IN ({marks})", doc_ids)
            self.db.execute(f"DELETE FROM documents WHERE id IN ({marks})", doc_ids)
            self.db.execute("INSERT INTO passages_fts(passages_fts) VALUES ('optimize')")  # drop old index segments
        return len(doc_ids)

    def delete(self, doc_id: int, *, owner: str) -> bool:
        """Hard-delete one of `owner`'s documents; False if there is no such document of theirs."""
        ids = [r[0] for r in self.db.execute("SELECT id FROM documents WHERE id = ? AND owner = ?", (doc_id, owner))]
        return self._delete(ids) == 1

    def purge_expired(self, now: float | None = None) -> int:
        """Hard-delete every expired document with its passages and index rows; how many."""
        now = time.time() if now is None else now
        return self._delete([r[0] for r in self.db.execute("SELECT id FROM documents WHERE expires <= ?", (now,))])
