"""Data-build recipes: YAML in, validated dataclasses out, errors that name the field.

A recipe lists `sources` (what to read), `steps` (how to clean) and `mix` (how much of each to
keep). See recipes/data/demo.yaml for a complete, commented example.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path

from hkllm import config
from hkllm.data import encodings

SOURCE_TYPES = ("jsonl", "parquet", "table", "html", "pdf", "text", "pycantonese", "pydoc")


class RecipeError(config.ConfigError):
    """`recipe.yaml: field 'sources[0].path': why` (one-argument form too: it is pickled out of workers)."""


@dataclass
class Source:
    name: str
    type: str
    path: str | None = None          # file, folder or glob, relative to the recipe's folder
    license: str = "unknown"
    replay: bool = False             # general-domain data replayed against forgetting
    variety: str | None = None       # force a variety instead of detecting it
    text_key: str = "text"           # jsonl / parquet
    template: str | None = None      # table: Python format string over the row's columns
    rows_per_doc: int = 1            # table: rows joined into one document
    split: str = "file"              # text: one document per "file" or per "paragraph"
    encoding: str = encodings.DEFAULT  # jsonl / table / text / html: a Python codec name (big5hkscs, gb18030, ...)
    corpus: str | None = None        # pycantonese: hkcancor | ctcpc
    sentences_per_doc: int = 20      # pycantonese ctcpc: sentences joined into one document


@dataclass
class Quality:
    min_chars: int = 20
    max_chars: int = 200_000
    max_duplicate_line_ratio: float = 0.3
    min_compression_ratio: float = 0.22  # zlib size / UTF-8 size; boilerplate and templates compress far better than prose
    max_symbol_ratio: float = 0.2
    max_digit_ratio: float = 0.35


@dataclass
class MinHash:
    ngram: int = 5
    buckets: int = 14
    hashes_per_bucket: int = 8


@dataclass
class Steps:
    hk_forms: bool = True            # Traditional text → HK character forms (Simplified left alone)
    redact: bool = True
    quality: Quality = field(default_factory=Quality)
    exact_dedup: bool = True
    minhash: MinHash | None = field(default_factory=MinHash)
    decontaminate: list[str] = field(default_factory=list)   # evaluation files (jsonl/tsv/txt)
    decontaminate_ngram: int = 13
    heldout: float = 0.05


@dataclass
class Mix:
    by: str = "variety"              # shares are keyed by "variety" or by "source"
    shares: dict[str, float] = field(default_factory=dict)  # empty: keep the natural mix
    replay: float = 0.0              # share of training characters from replay sources
    max_repeat: float = 1.0          # > 1 lets small groups be repeated (upsampled)
    seed: int = 0


@dataclass
class Recipe:
    name: str
    sources: list[Source]
    steps: Steps = field(default_factory=Steps)
    mix: Mix = field(default_factory=Mix)
    workers: int = 2
    # The recipe file itself (not a YAML field): relative paths resolve against its folder.
    file: Path = field(default=Path("."), metadata={"internal": True})

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else (self.file.parent / p)

    def fingerprint(self) -> str:
        """Hash of everything that changes the output (not the worker count)."""
        body = dataclasses.asdict(self)
        body.pop("workers"), body.pop("file")
        for source in body["sources"]:
            # `encoding` came later: left out at its default, builds made before it still resume
            if source["encoding"] == encodings.DEFAULT:
                del source["encoding"]
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a data recipe: field types by config.build, the rest by _validate."""
    path = Path(path)
    data = config.read_yaml(path, "recipe")
    try:
        recipe = config.build(Recipe, data, path, what="recipe field")
    except config.ConfigError as e:
        raise RecipeError(str(e)) from None     # callers catch RecipeError
    if not recipe.sources:
        raise RecipeError(path, "sources", "a non-empty list of sources is required")
    recipe.file = path
    _validate(recipe)
    return recipe


def template_fields(template: str) -> set[str]:
    return {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f}


def _table_header(r: Recipe, s: Source, f: Path, where: str) -> list[str]:
    """A CSV's column names, read in the source's encoding (stripped, as the reader strips them)."""
    try:
        with open(f, encoding=s.encoding, newline="") as fh:
            return [c.strip() for c in next(csv.reader(fh), [])]
    except UnicodeDecodeError:
        raise RecipeError(r.file, f"{where}.encoding", encodings.decode_failure(f, f.name, s.encoding)) from None
    except csv.Error as e:
        raise RecipeError(r.file, f"{where}.path", f"{f.name}:1: not a readable CSV header ({e})") from None


def _check_template_columns(r: Recipe, s: Source, where: str) -> None:
    """Fail before any work starts if a CSV table lacks a column the template uses."""
    root = r.resolve(s.path)
    files = sorted(root.rglob("*.csv")) if root.is_dir() else sorted(root.parent.glob(root.name))
    for f in files:
        if f.suffix.lower() != ".csv":
            continue
        columns = _table_header(r, s, f, where)
        missing = sorted(template_fields(s.template) - set(columns))
        if missing:
            raise RecipeError(r.file, f"{where}.template",
                              f"column(s) {', '.join(missing)} not in {f.name} (columns: {', '.join(columns)})")


def _check_encoding(p: Path, s: Source, where: str) -> None:
    if not encodings.is_text_codec(s.encoding):
        raise RecipeError(p, f"{where}.encoding", f"source {s.name!r}: unknown text codec {s.encoding!r} (a Python codec "
                                                  "name: utf-8-sig, big5hkscs, gb18030, utf-16, cp1252, ...)")
    if s.type not in encodings.TYPES and s.encoding != encodings.DEFAULT:
        raise RecipeError(p, f"{where}.encoding", f"source {s.name!r}: only {', '.join(encodings.TYPES)} sources are "
                                                  f"read as text; type {s.type!r} has no encoding to set")


def _validate(r: Recipe) -> None:
    p = r.file
    names = set()
    for i, s in enumerate(r.sources):
        where = f"sources[{i}]"
        if s.name in names:
            raise RecipeError(p, f"{where}.name", f"duplicate source name {s.name!r}")
        names.add(s.name)
        if s.type not in SOURCE_TYPES:
            raise RecipeError(p, f"{where}.type", f"unknown type {s.type!r} (known: {', '.join(SOURCE_TYPES)})")
        if s.type in ("jsonl", "parquet", "table", "html", "pdf", "text"):
            if not s.path:
                raise RecipeError(p, f"{where}.path", f"required for type {s.type!r}")
            if not any(r.resolve(s.path).parent.glob(r.resolve(s.path).name)) and not r.resolve(s.path).exists():
                raise RecipeError(p, f"{where}.path", f"no file matches {r.resolve(s.path)}")
        if s.type == "table" and not s.template:
            raise RecipeError(p, f"{where}.template", "required for type 'table' (e.g. \"{name} is in {district}.\")")
        _check_encoding(p, s, where)
        if s.type == "table":
            _check_template_columns(r, s, where)
        if s.type == "pycantonese" and s.corpus not in ("hkcancor", "ctcpc"):
            raise RecipeError(p, f"{where}.corpus", "must be 'hkcancor' or 'ctcpc'")
        if s.type == "text" and s.split not in ("file", "paragraph"):
            raise RecipeError(p, f"{where}.split", "must be 'file' or 'paragraph'")
    for i, f in enumerate(r.steps.decontaminate):
        if not r.resolve(f).exists():
            raise RecipeError(p, f"steps.decontaminate[{i}]", f"file not found: {r.resolve(f)}")
    if not 0 <= r.steps.heldout < 1:
        raise RecipeError(p, "steps.heldout", "must be in [0, 1)")
    m = r.mix
    if m.by not in ("variety", "source"):
        raise RecipeError(p, "mix.by", "must be 'variety' or 'source'")
    if not 0 <= m.replay < 1:
        raise RecipeError(p, "mix.replay", "must be in [0, 1)")
    if m.replay > 0 and not any(s.replay for s in r.sources):
        raise RecipeError(p, "mix.replay", "is > 0 but no source has 'replay: true'")
    if any(v < 0 for v in m.shares.values()) or (m.shares and sum(m.shares.values()) <= 0):
        raise RecipeError(p, "mix.shares", "shares must be non-negative and not all zero")
    if m.by == "source":
        for key in m.shares:
            if key not in names:
                raise RecipeError(p, f"mix.shares.{key}", "is not the name of a source")
    if m.max_repeat < 1:
        raise RecipeError(p, "mix.max_repeat", "must be >= 1")
    if r.workers < 1:
        raise RecipeError(p, "workers", "must be >= 1")
