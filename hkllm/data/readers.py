"""Readers: one datatrove pipeline step per recipe source, yielding Documents.

Every document carries `source`, `license` and `replay` in its metadata, and an id that says
where it came from (`source/file#line`). A malformed record is reported as `file:line: why`,
counted (`malformed` in the data card) and written to `rejects/malformed/`; the build goes on.
Files are shared out between tasks (file i goes to task i mod N).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterator

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from hkllm.data.recipe import Recipe, RecipeError, Source, template_fields

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
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{rel}:{lineno}"
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    self.malformed(where, f"not valid JSON ({e})")
                    continue
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


class TableSource(SourceReader):
    """Open-data tables (CSV, JSON array, JSONL) turned into text by the recipe's template."""

    def rows(self, path: Path, rel: str) -> Iterator[tuple[int, dict]]:
        if path.suffix.lower() == ".csv":
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f)
                self.check_template(reader.fieldnames or [], rel)
                for row in reader:
                    yield reader.line_num, row
        elif path.suffix.lower() == ".jsonl":
            yield from ((i, r) for i, r in JsonlRows(path, self))
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # {"records": [...]} style wrappers
                data = next((v for v in data.values() if isinstance(v, list)), [])
            for i, row in enumerate(data, start=1):
                yield i, row

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
                chunk.append(self.source.template.format_map(row))
            except (KeyError, IndexError, ValueError) as e:
                self.malformed(where, f"template field {e} missing or invalid in this row")
                continue
            first = first or where
            if len(chunk) >= self.source.rows_per_doc:
                yield self.make("\n".join(chunk), first)
                chunk, first = [], None
        if chunk:
            yield self.make("\n".join(chunk), first)


def JsonlRows(path: Path, reader: SourceReader) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    reader.malformed(f"{reader.relative(path)}:{lineno}", f"not valid JSON ({e})")


class HtmlSource(SourceReader):
    """HTML pages with navigation, sidebars and footers stripped by trafilatura."""

    def read_file(self, path, rel):
        import trafilatura

        html = path.read_text(encoding="utf-8", errors="replace")
        text = trafilatura.extract(html, include_comments=False, include_tables=True, favor_precision=True)
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
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            self.malformed(rel, f"not valid UTF-8 at byte {e.start}")
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
