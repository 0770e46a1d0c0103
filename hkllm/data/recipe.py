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
from typing import Any

import yaml

from hkllm.errors import UserError

SOURCE_TYPES = ("jsonl", "parquet", "table", "html", "pdf", "text", "pycantonese", "pydoc")


class RecipeError(UserError):
    def __init__(self, path: str | Path, field_name: str | None = None, message: str | None = None):
        # One-argument form too, so the error survives pickling out of a worker process.
        super().__init__(f"{path}: field '{field_name}': {message}" if field_name else str(path))


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
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


_EXPECTED = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string",
             "list[str]": "a list", "dict[str, float]": "a mapping"}


def _check_type(value: Any, ftype: str, where: str, path: Path) -> None:
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list[str]": isinstance(value, list),
        "dict[str, float]": isinstance(value, dict),
    }.get(ftype.replace(" | None", ""), True)
    if not ok and not (value is None and "None" in ftype):
        raise RecipeError(path, where, f"expected {_EXPECTED[ftype.replace(' | None', '')]}, got {value!r}")


def _build(cls, data: Any, where: str, path: Path):
    """Instantiate dataclass `cls` from a mapping, naming the field on any mismatch."""
    if not isinstance(data, dict):
        raise RecipeError(path, where or "(top level)", f"expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise RecipeError(path, f"{where}.{key}".lstrip("."), f"unknown field (known: {known})")
        sub = f"{where}.{key}".lstrip(".")
        ftype = str(fields[key].type)
        if ftype in _NESTED and value is not None:
            value = _build(_NESTED[ftype], value, sub, path)
        else:
            _check_type(value, ftype, sub, path)
        kwargs[key] = value
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in kwargs]
    if missing:
        raise RecipeError(path, f"{where}.{missing[0]}".lstrip("."), "is required")
    return cls(**kwargs)


_NESTED = {"Quality": Quality, "MinHash": MinHash, "MinHash | None": MinHash}


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise UserError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(path, "(top level)", "expected a mapping with 'name' and 'sources'")
    raw_sources = data.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise RecipeError(path, "sources", "a non-empty list of sources is required")
    sources = [_build(Source, s, f"sources[{i}]", path) for i, s in enumerate(raw_sources)]
    recipe = _build(Recipe, {**data, "sources": [], "steps": {}, "mix": {}}, "", path)
    recipe.sources, recipe.file = sources, path
    recipe.steps = _build(Steps, data.get("steps") or {}, "steps", path)
    recipe.mix = _build(Mix, data.get("mix") or {}, "mix", path)
    _validate(recipe)
    return recipe


def template_fields(template: str) -> set[str]:
    return {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f}


def _check_template_columns(r: Recipe, s: Source, where: str) -> None:
    """Fail before any work starts if a CSV table lacks a column the template uses."""
    root = r.resolve(s.path)
    files = sorted(root.rglob("*.csv")) if root.is_dir() else sorted(root.parent.glob(root.name))
    for f in files:
        if f.suffix.lower() != ".csv":
            continue
        with open(f, encoding="utf-8-sig", newline="") as fh:
            columns = next(csv.reader(fh), [])
        missing = sorted(template_fields(s.template) - set(columns))
        if missing:
            raise RecipeError(r.file, where, f"column(s) {', '.join(missing)} not in {f.name} (columns: {', '.join(columns)})")


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
        if s.type == "table":
            _check_template_columns(r, s, f"{where}.template")
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
