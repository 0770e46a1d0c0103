"""Readers: one datatrove pipeline step per recipe source, yielding Documents.

Every document carries `source`, `license` and `replay` in its metadata, and an id that says
where it came from (`source/file#line`). A malformed record is reported as `file:line: why`,
counted (`malformed` in the data card) and written to `rejects/malformed/`; the build goes on.
A table that is not in its source's `encoding` stops the build with the line and the codec to set.
Files are shared out between tasks (file i goes to task i mod N).
"""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path
from typing import Iterator

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from hkllm.data.encodings import decode_failure
from hkllm.data.recipe import Recipe, RecipeError, Source, template_fields
from hkllm.files import JsonlError, read_jsonl

_SUFFIXES = {
    "jsonl": (".jsonl", ".json"),
    "parquet": (".parquet",),
    "table": (".csv", ".json", ".jsonl"),
    "html": (".html", ".htm"),
    "pdf": (".pdf",),
    "text": (".txt", ".md"),
}


class SourceReader(PipelineStep):
    type = "📖 - READER"

    def __init__(self, source: Source, recipe: Recipe, rejects_dir: str):
        self.name = f"read {source.name} ({source.type})"  # before super().__init__, which names the stats
        super().__init__()
        self.source = source
        self.recipe = recipe
        self.rejects_dir = Path(rejects_dir)

    # --- files -----------------------------------------------------------------------------
    def files(self) -> list[Path]:
        root = self.recipe.resolve(self.source.path)
        if root.is_dir():
            found = [p for p in root.rglob("*") if p.suffix.lower() in _SUFFIXES[self.source.type]]
        elif root.exists():
            found = [root]
        else:
            found = list(root.parent.glob(root.name))
        return sorted(found)

    def relative(self, path: Path) -> str:
        """The path relative to the recipe's folder: document ids (and so the train/held-out
        split) must not depend on the directory the build was started from."""
        return os.path.relpath(path.resolve(), self.recipe.file.parent.resolve())

    # --- documents ---------------------------------------------------------------------------
    def make(self, text: str, where: str) -> Document:
        s = self.source
        meta = {"source": s.name, "license": s.license, "replay": s.replay}
        if s.variety:
            meta["variety"] = s.variety
        return Document(text=text, id=f"{s.name}/{where}", metadata=meta)

    def malformed(self, where: str, why: str) -> None:
        self.stat_update("malformed")
        logger.warning(f"{where}: {why} — record skipped (記錄已略過)")
        self._errors.write(json.dumps({"source": self.source.name, "where": where, "error": why}, ensure_ascii=False) + "\n")

    def malformed_line(self, error: JsonlError) -> None:
        self.malformed(f"{error.name}:{error.lineno}", error.reason)

    def documents(self, rank: int, world_size: int) -> Iterator[Document]:
        for path in self.files()[rank::world_size]:
            self.stat_update("input_files")
            yield from self.read_file(path, self.relative(path))

    def read_file(self, path: Path, rel: str) -> Iterator[Document]:
        raise NotImplementedError

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        errors_path = self.rejects_dir / "malformed" / f"{self.source.name}.{rank:05d}.jsonl"
        errors_path.parent.mkdir(parents=True, exist_ok=True)
        with open(errors_path, "w", encoding="utf-8") as self._errors:
            for doc in self.documents(rank, world_size):
                if doc.text.strip():
                    self.stat_update("documents")
                    self.update_doc_stats(doc)
                    yield doc


class JsonlSource(SourceReader):
    def read_file(self, path, rel):
        key = self.source.text_key
        for lineno, record in read_jsonl(path, name=rel, encoding=self.source.encoding, on_error=self.malformed_line):
            where = f"{rel}:{lineno}"
            if not isinstance(record, dict) or not isinstance(record.get(key), str):
                self.malformed(where, f"field '{key}' missing or not a string")
                continue
            yield self.make(record[key], where)


class ParquetSource(SourceReader):
    def read_file(self, path, rel):
        import pyarrow.parquet as pq

        key = self.source.text_key
        table = pq.ParquetFile(path)
        if key not in table.schema_arrow.names:
            raise RecipeError(self.recipe.file, f"sources[{self.source.name}].text_key",
                              f"column {key!r} not in {rel} (columns: {', '.join(table.schema_arrow.names)})")
        row = 0
        for batch in table.iter_batches(columns=[key]):
            for value in batch.column(0).to_pylist():
                row += 1
                if isinstance(value, str):
                    yield self.make(value, f"{rel}:row{row}")
                else:
                    self.malformed(f"{rel}:row{row}", f"column '{key}' is not a string")


def clean_cell(value):
    """A table cell as training text: HTML entities decoded (real MTR cells hold `&#32171;`,
    i.e. 綫) and the padding around it dropped; numbers and other JSON values are left alone."""
    return html.unescape(value).strip() if isinstance(value, str) else value


def clean_row(row: dict) -> dict:
    return {(k.strip() if isinstance(k, str) else k): clean_cell(v) for k, v in row.items()}


def table_rows(path: Path, rel: str, encoding: str, malformed, header=None) -> Iterator[tuple[int, dict]]:
    """(line or row number, row) of an open-data table: CSV (with a header row), JSON (a list of rows
    or an object holding one) or JSONL. `header(columns)` sees a CSV's stripped column names first;
    `malformed(where, why)` gets each row or file that does not parse (the reading goes on unless it
    raises). A file that is not in `encoding` raises UnicodeDecodeError; an unreadable CSV header
    csv.Error. The data build's TableSource and `hkllm data instructions` both read tables with it."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, encoding=encoding, newline="") as f:
            reader = csv.DictReader(f)
            if header:
                header([c.strip() for c in reader.fieldnames or []])
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:  # the reader has moved past the bad line: go on with the next
                    malformed(f"{rel}:{reader.line_num}", f"not valid CSV ({e})")
                    continue
                yield reader.line_num, row
    elif suffix == ".jsonl":
        def bad_line(error: JsonlError) -> None:
            if isinstance(error.cause, UnicodeDecodeError):
                raise error.cause  # the table is in another codec: the caller says which to set
            malformed(f"{error.name}:{error.lineno}", error.reason)

        yield from read_jsonl(path, name=rel, encoding=encoding, on_error=bad_line)
    else:
        # lstrip: a byte-order mark survives when the recipe names plain utf-8, and json refuses it
        text = path.read_text(encoding=encoding).lstrip("\ufeff")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            malformed(f"{rel}:{e.lineno}", f"not valid JSON ({e.msg}, column {e.colno}); file skipped")
            return
        if isinstance(data, dict):  # {"records": [...]} style wrappers
            data = next((v for v in data.values() if isinstance(v, list)), [])
        if not isinstance(data, list):
            malformed(f"{rel}:1", "a JSON table must be a list of rows (or an object holding one); file skipped")
            return
        yield from enumerate(data, start=1)


class TableSource(SourceReader):
    """Open-data tables (CSV, JSON array, JSONL) turned into text by the recipe's template.

    A file that does not decode in the source's `encoding` stops the build with the line and
    the codec to set (every row of it would be garbage); a row that does not parse is malformed."""

    def rows(self, path: Path, rel: str) -> Iterator[tuple[int, dict]]:
        try:
            yield from table_rows(path, rel, self.source.encoding, self.malformed,
                                  header=lambda columns: self.check_template(columns, rel))
        except UnicodeDecodeError:
            raise RecipeError(self.recipe.file, f"sources[{self.source.name}].encoding",
                              decode_failure(path, rel, self.source.encoding)) from None
        except csv.Error as e:
            raise RecipeError(self.recipe.file, f"sources[{self.source.name}].path",
                              f"{rel}:1: not a readable CSV header ({e})") from None

    def check_template(self, columns: list[str], rel: str) -> None:
        unknown = sorted(template_fields(self.source.template) - set(columns))
        if unknown:
            raise RecipeError(self.recipe.file, f"sources[{self.source.name}].template",
                              f"column(s) {', '.join(unknown)} not in {rel} (columns: {', '.join(columns)})")

    def read_file(self, path, rel):
        chunk: list[str] = []
        first = None
        for lineno, row in self.rows(path, rel):
            where = f"{rel}:{lineno}"
            if not isinstance(row, dict):
                self.malformed(where, "row is not an object")
                continue
            try:
                chunk.append(self.source.template.format_map(clean_row(row)))
            except (KeyError, IndexError, ValueError) as e:
                self.malformed(where, f"template field {e} missing or invalid in this row")
                continue
            first = first or where
            if len(chunk) >= self.source.rows_per_doc:
                yield self.make("\n".join(chunk), first)
                chunk, first = [], None
        if chunk:
            yield self.make("\n".join(chunk), first)


class HtmlSource(SourceReader):
    """HTML pages with navigation, sidebars and footers stripped by trafilatura."""

    def read_file(self, path, rel):
        import trafilatura

        page = path.read_text(encoding=self.source.encoding, errors="replace")
        text = trafilatura.extract(page, include_comments=False, include_tables=True, favor_precision=True)
        if not text:
            self.malformed(rel, "no main text found in the HTML")
            return
        yield self.make(text, rel)


class PdfSource(SourceReader):
    def read_file(self, path, rel):
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError

        try:
            pages = [page.extract_text() or "" for page in PdfReader(path).pages]
        except (PdfReadError, OSError, ValueError) as e:
            self.malformed(rel, f"unreadable PDF ({e})")
            return
        text = "\n\n".join(p.strip() for p in pages if p.strip())
        if not text:
            self.malformed(rel, "PDF has no extractable text (scanned? run OCR first)")
            return
        yield self.make(text, rel)


class TextSource(SourceReader):
    def read_file(self, path, rel):
        try:
            text = path.read_text(encoding=self.source.encoding)
        except UnicodeDecodeError:
            self.malformed(rel, decode_failure(path, rel, self.source.encoding))
            return
        if self.source.split == "file":
            yield self.make(text, rel)
            return
        line = 1
        for para in text.split("\n\n"):
            if para.strip():
                yield self.make(para, f"{rel}:{line}")
            line += para.count("\n") + 2


class PycantoneseSource(SourceReader):
    """Cantonese corpora that ship inside pycantonese: HKCanCor (CC BY 4.0), CTCPC (CC0)."""

    def documents(self, rank, world_size):
        if self.source.corpus == "hkcancor":
            import pycantonese

            corpus = pycantonese.hkcancor()
            for i, (path, utterances) in enumerate(zip(corpus.file_paths, corpus.utterances(by_file=True))):
                if i % world_size == rank:
                    lines = ("".join(tok.word for tok in u.tokens) for u in utterances)
                    yield self.make("\n".join(lines), f"hkcancor/{Path(path).name}")
        else:
            import importlib.resources

            sents = json.loads(importlib.resources.files("pycantonese").joinpath("data/ctcpc/sents.json").read_text("utf-8"))
            # The file holds one sentence per entry; group neighbours into documents and drop
            # entries without any Chinese character (the file has symbol-only junk lines).
            sents = [s.strip() for s in sents if any("\u4e00" <= c <= "\u9fff" for c in s)]
            n = self.source.sentences_per_doc
            for k, start in enumerate(range(0, len(sents), n)):
                if k % world_size == rank:
                    yield self.make("\n".join(sents[start : start + n]), f"ctcpc/sents.json#{start}")


class PydocSource(SourceReader):
    """English prose that ships with Python (pydoc topics; PSF licence): general-domain replay.

    Topics are cut into documents of about 1,000 characters (whole paragraphs), so that mixing
    by whole documents can hit a replay share closely."""

    def documents(self, rank, world_size):
        from pydoc_data.topics import topics

        k = 0
        for name, text in sorted(topics.items()):
            chunk: list[str] = []
            for para in text.split("\n\n"):
                chunk.append(para)
                if sum(map(len, chunk)) >= 1000:
                    if k % world_size == rank:
                        yield self.make("\n\n".join(chunk), f"pydoc/{name}#{k}")
                    chunk, k = [], k + 1
            if chunk:
                if k % world_size == rank:
                    yield self.make("\n\n".join(chunk), f"pydoc/{name}#{k}")
                k += 1


READERS = {
    "jsonl": JsonlSource, "parquet": ParquetSource, "table": TableSource, "html": HtmlSource,
    "pdf": PdfSource, "text": TextSource, "pycantonese": PycantoneseSource, "pydoc": PydocSource,
}


def make_reader(source: Source, recipe: Recipe, rejects_dir: str) -> SourceReader:
    return READERS[source.type](source, recipe, rejects_dir)
