"""Loaders for external Cantonese benchmarks that are already on disk. Nothing is ever downloaded.

    load_external("yue-mmlu", "~/benchmarks")                    -> list[MCItem]
    load_external("hkcanto-eval", "~/benchmarks", limit=500)      -> a stable, stratified 500
    items, report = load_external_report("yue-arc-c", "~/benchmarks")   # + what was skipped, and why

MCItem is a multiple-choice question, scored by the log-likelihood of each choice; GenItem is an
open generation scored against a reference (kind "math", "translation" or "qa").

The files are taken as published. A malformed record is skipped, counted and reported (file,
record, reason), as `hkllm data build` reports malformed rows: LoadReport.skipped holds
    Yue-MMLU/security_study.json record 84: field "A" is missing
(the file relative to the directory searched, the 0-based record number as in the item ids, plus
the line for CSV and JSON Lines files). A file that cannot be read at all (not UTF-8, not valid
JSON, a Git LFS pointer) is skipped the same way. A benchmark fails, with `hkllm.errors.UserError`
and one clear line, only when nothing loads: a missing directory or file names the directory and
the layouts looked for; a clone made without Git LFS says so ("run `git lfs pull`").

Item ids are stable: "<file stem>-<record's own id>" where the record has one ("no" in Yue-Benchmark,
"id" in Hugging Face-style files) and it is unique in its file, else "<file stem>-<index>".

`limit` draws a stable, stratified subset: every topic (subject; for HKCanto-Eval first every
task, then every subject in it) gets at least one item when the limit allows, the rest goes to
topics in proportion to their size, and inside a topic the items kept are those with the smallest
SHA-256 of "<source>\\0<id>", so the same files give the same subset on every machine and run.
Items keep their file order.

Where the files are looked for. `data_dir` may be one benchmark's folder or file, one clone, or a
folder holding clones side by side, e.g.
    benchmarks/Yue-Benchmark/   (git clone github.com/jiangjyjy/Yue-Benchmark)
    benchmarks/hkcanto-eval/    (git clone github.com/hon9kon9ize/hkcanto-eval, with Git LFS)
  Yue-Benchmark: the benchmark folder, with any capitalisation and "-" or "_", as
    <dir>/<Benchmark>, <dir>/yue_benchmark_v1/<Benchmark>, <dir>/data/latest_data/<Benchmark>
  where <dir> is data_dir itself or any folder directly in it (the first that has the files wins),
  or data_dir being the benchmark folder; all *.json / *.jsonl files in it are read, in name order.
  HKCanto-Eval: every <data>/<task>/test/<subject>_test.csv under data_dir (recursively; dev/ and
  test_old/ are not read), where <data> is a folder holding at least one of HKCanto-Eval's tasks
  (canto-mmlu, cultural, dse, hk-law, professional, phonetics, mmlu): other repositories beside the
  clone (Yue-Benchmark's MMLU_Cantonese/test/) are not taken for HKCanto-Eval. A task's test/
  folder, a folder of *_test.csv files or one CSV file works too.

Formats (Yue-Benchmark read from github.com/jiangjyjy/Yue-Benchmark data/latest_data/; the
Hugging Face copy huggingface.co/datasets/BillBao/Yue-Benchmark has yue_benchmark_v1/<Benchmark>/):
  yue-mmlu        Yue-MMLU/<subject>.json (some named <subject>_review4_publish1.json), a JSON array
                  of {"question", "A", "B", "C", "D", "answer": "B", "no": "3"}. topic = the subject
                  (file stem without "_reviewN_publishN"). The published security_study.json has a
                  record whose "A" choice was merged into the question (record 84): it is skipped.
  yue-arc-c       Yue-ARC-C/Yue-ARC-C.json (folder also Yue_ARC_C), the Yue-MMLU record form. Not in
                  the public index we could read; its shapes are those reported from the real file:
                  three-choice items have "D": null (trailing null or empty choices are dropped), and
                  some answers are ARC's 1-based numbers "1"-"4" (taken as A-D). The Hugging Face ARC
                  form {"question", "choices": {"text": [...], "label": [...]}, "answerKey"} and
                  {"choices": [...], "answer": letter or 0-based index} are accepted too.
  yue-gsm8k       Yue-GSM8K/Yue-GSM8K.json, {"question", "answer": "...####18"}. reference = the number
                  after the last "####", commas and "$" removed; an answer that is just a number is
                  taken as is.
  yue-truthfulqa  Yue-TruthfulQA/Yue-TruthfulQA.json, {"question", "true": "a；b；…", "false": "…",
                  "best_answer"}: there is no multiple-choice form, so GenItem(kind="qa",
                  reference=best_answer; else the first "true" answer). If the records carry
                  TruthfulQA's "mc1_targets" ({"choices": [...], "labels": [0, 1, ...]} or
                  {"<choice>": 0/1, ...}) they load as MCItems instead; the first record that loads
                  decides, and records of the other form are skipped.
  yue-trans       Yue-TRANS/*.json. Not in the public index we could read; its shapes are those
                  reported from the real files: both have the keys "no", "en", "yue", and in the
                  zh->yue file the Mandarin source sits under "en". So the source language is read
                  from the text: an "en" field written in Chinese characters is taken as "zh". Other
                  record forms: language keys {"en"|"zh"|"yue": text} (also "english", "mandarin",
                  "chinese", "cantonese"; null values are ignored), the same nested under
                  "translation", or explicit {"src_lang", "tgt_lang", "source", "target"}. One
                  GenItem per direction: the one a file name names ("en-yue", "zh_yue", "yue2en", ...)
                  when the record has both sides, else X->yue for each of "en", "zh" present.
                  prompt = the source text (the caller adds the instruction); lang = tgt_lang;
                  topic = "<src>-<tgt>".

HKCanto-Eval (2025), github.com/hon9kon9ize/hkcanto-eval (before: hon9kon9ize/hkeval2025; its
data/<task>/{dev,test}/<subject>_{dev,test}.csv and scripts/benchmark_tasks.py read). The CSV files
are stored with Git LFS: a clone without it holds pointer files, which are named as such. CSV
files without a header, each row: question, choice 1..k, answer letter (k = 4, or 5 with "None of
the above" in phonetics); an accented or full-width answer letter (the DSE "Ď") is read as the
letter. A first row whose last cell is "answer" is taken as a header. topic = "<task>/<subject>";
ids "<task>/<file stem>-<row index>". lang: "en" / "zh" for subjects ending "_en" / "_zh" (DSE,
professional); "en" for a subject whose questions are written in English (the phonetics questions
about Cantonese are) and for data/mmlu/; else "yue". data/mmlu/ is the original English MMLU
(14,042 questions that would swamp a Cantonese score): it is left out, and said so in the report,
unless data_dir is that folder (or inside it). The repo's canto-nlp JSON tasks (translation,
summarization, sentiment) are not loaded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from hkllm.errors import UserError
from hkllm.files import JsonlError, read_jsonl

__all__ = ["MCItem", "GenItem", "Skip", "LoadReport", "LOADERS", "load_external", "load_external_report",
           "stratified_subset"]


@dataclass
class MCItem:
    """Multiple choice, scored by the log-likelihood of each choice."""

    id: str
    question: str
    choices: list[str]
    answer: int
    lang: str = "yue"
    topic: str = ""
    source: str = ""


@dataclass
class GenItem:
    """Open generation scored against a reference (GSM8K numeric answer, translation, TruthfulQA ...)."""

    id: str
    prompt: str
    reference: str
    kind: str  # "math" | "translation" | "qa"
    lang: str = "yue"
    src_lang: str = ""
    tgt_lang: str = ""
    source: str = ""
    topic: str = ""  # for `limit`: translation direction "en-yue", TruthfulQA category


Items = Union[list[MCItem], list[GenItem]]

_LETTERS = "ABCDEFGHIJ"
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_NO_DOWNLOAD = "these loaders read files you already have; nothing is downloaded"
_LFS_PREFIX = b"version https://git-lfs.github.com/spec/"
_LFS_PROBLEM = ("is a Git LFS pointer file, not the data (the repository was cloned without Git LFS): "
                "run `git lfs pull` in the clone")


# ---------------------------------------------------------------------------------------------
# What was loaded, and what was skipped


@dataclass
class Skip:
    """A record (or a whole file) left out, and why."""

    where: str  # "Yue-MMLU/security_study.json record 84", or a file "Yue-ARC-C/Yue-ARC-C.json"
    reason: str
    file_level: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class LoadReport:
    """What one load read: files, records, items made, and everything skipped or left out."""

    name: str
    root: str = ""
    files: list[str] = field(default_factory=list)  # files read, relative to root
    records: int = 0  # records seen in those files
    loaded: int = 0  # items made from them (before `limit`)
    topics: int = 0  # distinct topics (subjects) among them
    skipped: list[Skip] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # folders not loaded on purpose, and why
    limit: int | None = None
    selected: int | None = None  # items kept by `limit`
    topics_selected: int | None = None

    def skip(self, error: "_RecordError") -> None:
        self.skipped.append(Skip(error.where, error.problem))

    def skip_file(self, error: "_FileError") -> None:
        self.skipped.append(Skip(error.display, error.problem, file_level=True))

    @property
    def skipped_records(self) -> int:
        return sum(not s.file_level for s in self.skipped)

    @property
    def skipped_files(self) -> int:
        return sum(s.file_level for s in self.skipped)

    @property
    def lfs_pointers(self) -> int:
        return sum(s.file_level and s.reason == _LFS_PROBLEM for s in self.skipped)

    def summary(self) -> str:
        """One line: "yue-mmlu: 1,525 item(s) from 22 file(s); 1 malformed record(s) skipped ..."."""
        parts = [f"{self.loaded:,} item(s) from {len(self.files)} file(s)"]
        if self.skipped_records:
            parts.append(f"{self.skipped_records:,} malformed record(s) skipped")
        if self.skipped_files:
            lfs = f", {self.lfs_pointers} of them Git LFS pointers: run `git lfs pull`" if self.lfs_pointers else ""
            parts.append(f"{self.skipped_files} unreadable file(s) skipped{lfs}")
        if self.skipped:
            parts.append(f"first: {self.skipped[0]}")
        parts += [f"left out {x}" for x in self.left_out]
        if self.limit:
            parts.append(f"limit {self.limit}: {self.selected:,} item(s) from {self.topics_selected} of "
                         f"{self.topics} topic(s)")
        return f"{self.name}: " + "; ".join(parts)

    def to_dict(self, examples: int = 20) -> dict:
        """For results.json, in the data card's form: counts and the first `examples` skips."""
        out = {"summary": self.summary(), "root": self.root, "files": len(self.files), "records": self.records, "loaded": self.loaded,
               "topics": self.topics, "skipped_records": self.skipped_records, "skipped_files": self.skipped_files,
               "skipped_examples": [{"where": s.where, "error": s.reason} for s in self.skipped[:examples]],
               "left_out": list(self.left_out)}
        if self.limit:
            out.update(limit=self.limit, selected=self.selected, topics_selected=self.topics_selected)
        return out


# ---------------------------------------------------------------------------------------------
# Messages and fields


class _RecordError(UserError):
    """A malformed record: skipped and reported."""

    def __init__(self, where: "_Where", problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = str(where), problem


class _FileError(UserError):
    """A file that cannot be read as the benchmark's (not UTF-8, not JSON, a Git LFS pointer)."""

    def __init__(self, display: str, problem: str):
        super().__init__(f"{display}: {problem}")
        self.display, self.problem = display, problem


class _Where:
    """Where a record is, for messages: file (as shown), 0-based record index, line."""

    def __init__(self, display: str, index: int, line: int | None = None):
        self.display, self.index, self.line = display, index, line

    def __str__(self) -> str:
        line = f" (line {self.line})" if self.line is not None else ""
        return f"{self.display} record {self.index}{line}"

    def error(self, problem: str) -> _RecordError:
        return _RecordError(self, problem)

    def field_error(self, field: str, problem: str) -> _RecordError:
        return _RecordError(self, f'field "{field}" {problem}')


class _Invalid:
    """A JSON Lines line that is not valid JSON: skipped as a record."""

    def __init__(self, problem: str):
        self.problem = problem


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def _scalar_text(value: Any, where: _Where, field: str) -> str:
    """A text field's value: strings as they are (stripped), numbers as text."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise where.field_error(field, f"is {_type_name(value)}, expected text")


def _text(rec: dict, where: _Where, *keys: str, required: bool = True, nonempty: bool = True) -> str | None:
    """The first of `keys` present in `rec`, as text."""
    for key in keys:
        if key in rec:
            text = _scalar_text(rec[key], where, key)
            if nonempty and not text:
                raise where.field_error(key, "is empty")
            return text
    if not required:
        return None
    others = ", ".join(f'"{k}"' for k in keys[1:])
    also = f" (also looked for {others})" if others else ""
    raise where.field_error(keys[0], f"is missing{also}")


def _letter_range(labels: list[str]) -> str:
    if len(labels) > 2 and "".join(labels) == _LETTERS[: len(labels)]:
        return f"{labels[0]}-{labels[-1]}"
    return ", ".join(labels)


# Latin capitals that Cyrillic and Greek letters look like, as typed into answer columns.
_LOOKALIKE = str.maketrans("АВСЕΑΒΕ", "ABCEABE")


def _fold(text: str) -> str:
    """Full-width forms, accents and look-alike letters folded: "Ď" -> "D", "Ｂ" -> "B"."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    return "".join(c for c in text if not unicodedata.combining(c)).translate(_LOOKALIKE)


def _answer_index(value: Any, labels: list[str], where: _Where, field: str, one_based: bool = False) -> int:
    """An answer given as a label ("B", " b.", "(C)", "Ď"); a number is a 0-based index for list
    choices and, where `one_based` (lettered choices), ARC's 1-based numbering ("1".."k")."""
    if isinstance(value, int) and not isinstance(value, bool):
        if one_based and 1 <= value <= len(labels):
            return value - 1
        if not one_based and 0 <= value < len(labels):
            return value
        expected = (f"one of {_letter_range(labels)} or a number 1-{len(labels)}" if one_based
                    else f"an index 0-{len(labels) - 1}")
        raise where.field_error(field, f"is {value}, expected {expected}")
    if isinstance(value, str):
        key = _fold(value).strip().strip("().:：。 ").upper()
        upper = [_fold(label).upper() for label in labels]
        if key in upper:
            return upper.index(key)
        if one_based and key.isascii() and key.isdigit() and 1 <= int(key) <= len(labels):
            return int(key) - 1
    numbers = f" (or a number 1-{len(labels)})" if one_based else ""
    raise where.field_error(field, f"is {_show(value)}, expected one of {_letter_range(labels)}{numbers}")


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_LATIN = re.compile(r"[A-Za-z]")
_EN_WORDS = {"the", "of", "which", "what", "is", "are", "in", "to", "following", "and", "does", "do", "how",
             "if", "with", "for", "that", "this", "select"}  # not "a": a maths variable in Cantonese


def _chinese_written(text: str) -> bool:
    """Mostly Chinese characters (a Mandarin source under an "en" key)."""
    return len(_CJK.findall(text)) > len(_LATIN.findall(text))


def _english_written(text: str) -> bool:
    """Written in English, even when it asks about Chinese characters ("Which of the following
    character is a homophone of `不` in Cantonese?"); Cantonese with a formula or an English word
    in it is not."""
    words = re.findall(r"[a-z]+", text.lower())
    return sum(w in _EN_WORDS for w in words) >= 2 and len(_LATIN.findall(text)) >= len(_CJK.findall(text))


# ---------------------------------------------------------------------------------------------
# Reading files


def _read_text(path: Path, display: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _FileError(display, f"cannot read ({e.strerror})") from None
    if data.startswith(_LFS_PREFIX):
        raise _FileError(display, _LFS_PROBLEM)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _FileError(display, f"not UTF-8 text (byte {e.start})") from None


def _jsonl_records(path: Path, display: str) -> list[tuple[_Where, Any]]:
    """JSON Lines, one record a line. A line that is not JSON stays in place as an _Invalid record
    (skipped and reported, without shifting the indices of the others); a file that is not UTF-8,
    or is a Git LFS pointer, is skipped whole."""
    out: list[tuple[_Where, Any]] = []

    def bad_line(e: JsonlError) -> None:
        if isinstance(e.cause, UnicodeDecodeError):
            raise _FileError(display, f"not UTF-8 text (line {e.lineno}: {e.cause.reason})") from None
        out.append((_Where(display, len(out), e.lineno), _Invalid(e.reason)))

    try:
        with open(path, "rb") as f:
            if f.read(len(_LFS_PREFIX)) == _LFS_PREFIX:
                raise _FileError(display, _LFS_PROBLEM)
        for lineno, record in read_jsonl(path, name=display, on_error=bad_line):
            out.append((_Where(display, len(out), lineno), record))
    except OSError as e:
        raise _FileError(display, f"cannot read ({e.strerror})") from None
    return out


def _json_records(path: Path, display: str) -> list[tuple[_Where, Any]]:
    """A JSON array of records, or JSON Lines (one record a line), with where each one is."""
    if path.suffix.lower() == ".jsonl":
        return _jsonl_records(path, display)
    text = _read_text(path, display)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _FileError(display, f"not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    if not isinstance(data, list):
        raise _FileError(display, f"expected a JSON array of records, got {_type_name(data)}")
    return [(_Where(display, i), record) for i, record in enumerate(data)]


def _object(where: _Where, record: Any) -> dict:
    if isinstance(record, _Invalid):
        raise where.error(record.problem)
    if not isinstance(record, dict):
        raise where.error(f"expected a JSON object, got {_type_name(record)}")
    return record


def _own_ids(stem: str, records: list[tuple[_Where, Any]]) -> list[str]:
    """ "<stem>-<own id>" when every record has a unique "no"/"id", else "<stem>-<index>"."""
    own: list[str] | None = []
    for where, rec in records:
        value = rec.get("no", rec.get("id")) if isinstance(rec, dict) else None
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
            own = None
            break
        own.append(str(value).strip())
    if own is None or len(set(own)) != len(own):
        own = [str(where.index) for where, _ in records]
    return [f"{stem}-{key}" for key in own]


def _file_records(file: Path, root: Path, report: LoadReport) -> list[tuple[str, _Where, Any]]:
    """(item id, where, record) of each record in a JSON / JSON Lines file; an unreadable file is
    skipped (reported) and gives none."""
    display = _display(file, root)
    try:
        records = _json_records(file, display)
    except _FileError as e:
        report.skip_file(e)
        return []
    report.files.append(display)
    report.records += len(records)
    return [(item_id, where, rec) for item_id, (where, rec) in zip(_own_ids(file.stem, records), records)]


def _display(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _check_exists(name: str, path: Path) -> None:
    if not path.exists():
        raise UserError(f"{name}: {path} does not exist ({_NO_DOWNLOAD})")


def _finish(name: str, items: list, report: LoadReport) -> list:
    """Record what loaded; fail only when nothing did, saying why."""
    report.loaded = len(items)
    report.topics = len({it.topic for it in items})
    if items:
        return items
    root = report.root
    if not report.skipped:
        raise UserError(f"{name}: {', '.join(report.files)} under {root} contain no records")
    if report.lfs_pointers and report.lfs_pointers == len(report.skipped):
        first = next(s for s in report.skipped if s.reason == _LFS_PROBLEM)
        raise UserError(f"{name}: nothing loaded from {root}: its {report.lfs_pointers} file(s) are Git LFS "
                        f"pointer files, not the data (e.g. {first.where}): the repository was cloned without "
                        "Git LFS; run `git lfs pull` in the clone")
    lfs = (f"; {report.lfs_pointers} of the files are Git LFS pointers: run `git lfs pull` in the clone"
           if report.lfs_pointers else "")
    examples = "; ".join(str(s) for s in report.skipped[:3])
    raise UserError(f"{name}: nothing loaded from {root}: {report.skipped_records} record(s) and "
                    f"{report.skipped_files} file(s) skipped as malformed, e.g. {examples}{lfs}")


# ---------------------------------------------------------------------------------------------
# Yue-Benchmark: where the files are

_YUE_DIRS = {
    "yue-mmlu": ("Yue-MMLU",),
    "yue-arc-c": ("Yue-ARC-C", "Yue_ARC_C"),
    "yue-gsm8k": ("Yue-GSM8K",),
    "yue-truthfulqa": ("Yue-TruthfulQA",),
    "yue-trans": ("Yue-TRANS",),
}
_YUE_PARENTS = ((), ("yue_benchmark_v1",), ("data", "latest_data"))


def _child_dir(parent: Path, names: set[str]) -> Path | None:
    """The subdirectory of `parent` whose name matches one of `names` (normalized), if any."""
    if not parent.is_dir():
        return None
    for child in sorted(parent.iterdir()):
        if child.is_dir() and _norm(child.name) in names:
            return child
    return None


def _json_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".json", ".jsonl"))


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _yue_files(name: str, path: Path, report: LoadReport) -> tuple[list[Path], Path]:
    """The benchmark's JSON files under `path` (a directory or one file), and the root for display."""
    _check_exists(name, path)
    if path.is_file():
        report.root = str(path.parent)
        return [path], path.parent
    report.root = str(path)
    folder_names = _YUE_DIRS[name]
    wanted = {_norm(n) for n in folder_names}
    folders = [path] if _norm(path.name) in wanted else []
    for base in [path] + _subdirs(path):  # data_dir itself, or a clone inside it
        for parents in _YUE_PARENTS:
            found = _child_dir(base.joinpath(*parents), wanted)
            if found is not None:
                folders.append(found)
    for folder in folders:
        files = _json_files(folder)
        if files:
            return files, path
    # The canonical single file (e.g. Yue-GSM8K.json) lying directly in the directory.
    direct = [p for p in _json_files(path) if _norm(p.stem).startswith(_norm(folder_names[0]))]
    if direct:
        return direct, path
    main = folder_names[0]
    looked = ", ".join(f"{'/'.join(parents + (main,))}/" for parents in _YUE_PARENTS)
    raise UserError(
        f"{name}: no *.json files found under {path}: looked in {looked} there and in each folder directly "
        f"in it (e.g. a Yue-Benchmark/ clone beside hkcanto-eval/), or {path} being the {main} folder, or a "
        f"{main}*.json file in it. Expected the layout of github.com/jiangjyjy/Yue-Benchmark "
        f"(data/latest_data/{main}/) or huggingface.co/datasets/BillBao/Yue-Benchmark "
        f"(yue_benchmark_v1/{main}/); {_NO_DOWNLOAD}")


# ---------------------------------------------------------------------------------------------
# Multiple-choice records (Yue-MMLU, Yue-ARC-C)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _mc_choices(rec: dict, where: _Where) -> tuple[list[str], int]:
    """(choices, answer index) from lettered keys "A".."D" + "answer", or a "choices" field."""
    if "choices" in rec and not any(letter in rec for letter in "AB"):
        raw = rec["choices"]
        answer_field = "answerKey" if "answerKey" in rec else "answer"
        if answer_field not in rec:
            raise where.field_error("answer", "is missing")
        if isinstance(raw, dict):  # Hugging Face ARC: {"text": [...], "label": [...]}
            texts, labels = raw.get("text"), raw.get("label")
            if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
                raise where.field_error("choices", 'expected {"text": [...], "label": [...]} of equal length')
            choices = [_scalar_text(t, where, "choices") for t in texts]
            labels = [_scalar_text(label, where, "choices") for label in labels]
        elif isinstance(raw, list):
            choices = [_scalar_text(t, where, "choices") for t in raw]
            labels = list(_LETTERS[: len(choices)])
        else:
            raise where.field_error("choices", f"is {_type_name(raw)}, expected a list")
        if len(choices) < 2:
            raise where.field_error("choices", f"has {len(choices)} choice(s), expected at least 2")
        return choices, _answer_index(rec[answer_field], labels, where, answer_field)

    present = [letter for letter in _LETTERS if letter in rec]
    if not present:
        raise where.field_error("A", 'is missing (expected choices "A", "B", "C", "D" or a "choices" list)')
    letters = list(_LETTERS[: _LETTERS.index(present[-1]) + 1])
    while len(letters) > 2 and letters[-1] in rec and _blank(rec[letters[-1]]):
        letters.pop()  # a three-choice item: "D": null
    for letter in letters:
        if letter not in rec:
            raise where.field_error(letter, "is missing")
    if len(letters) < 2:
        raise where.field_error("B", "is missing (expected at least 2 choices)")
    choices = []
    for letter in letters:
        if rec[letter] is None:
            raise where.field_error(letter, "is null")
        choices.append(_scalar_text(rec[letter], where, letter))
    answer_field = "answer" if "answer" in rec or "answerKey" not in rec else "answerKey"
    if answer_field not in rec:
        raise where.field_error("answer", "is missing")
    return choices, _answer_index(rec[answer_field], letters, where, answer_field, one_based=True)


_REVIEW_SUFFIX = re.compile(r"_review\d+_publish\d+$")


def _load_yue_mc(name: str, path: Path, subject_topic: bool, report: LoadReport | None) -> list[MCItem]:
    report = report if report is not None else LoadReport(name)
    files, root = _yue_files(name, path, report)
    items: list[MCItem] = []
    for file in files:
        topic = _REVIEW_SUFFIX.sub("", file.stem) if subject_topic else ""
        for item_id, where, rec in _file_records(file, root, report):
            try:
                rec = _object(where, rec)
                question = _text(rec, where, "question")
                choices, answer = _mc_choices(rec, where)
            except _RecordError as e:
                report.skip(e)
                continue
            items.append(MCItem(id=item_id, question=question, choices=choices, answer=answer,
                                lang="yue", topic=topic, source=name))
    return _finish(name, items, report)


def load_yue_mmlu(path: Path, report: LoadReport | None = None) -> list[MCItem]:
    """Yue-MMLU: {"question", "A".."D", "answer": letter, "no"}; topic = the subject (file stem)."""
    return _load_yue_mc("yue-mmlu", Path(path).expanduser(), True, report)


def load_yue_arc_c(path: Path, report: LoadReport | None = None) -> list[MCItem]:
    """Yue-ARC-C: the Yue-MMLU record form; three-choice items and 1-based number answers taken."""
    return _load_yue_mc("yue-arc-c", Path(path).expanduser(), False, report)


# ---------------------------------------------------------------------------------------------
# Yue-GSM8K


def _final_number(value: Any, where: _Where) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise where.field_error("answer", f"is {_type_name(value)}, expected text ending in \"#### <number>\"")

    def clean(text: str) -> str:
        text = re.sub(r"[,，\s]", "", text)
        return text.lstrip("$＄").rstrip("。.")

    if "####" not in value:
        if _NUMBER.fullmatch(clean(value)):
            return clean(value)
        raise where.field_error("answer", f'has no final answer after "####": {_show(value)}')
    tail = value.rsplit("####", 1)[1]
    number = clean(tail)
    if not _NUMBER.fullmatch(number):
        raise where.field_error("answer", f'ends with "####{tail}", expected a number after "####"')
    return number


def load_yue_gsm8k(path: Path, report: LoadReport | None = None) -> list[GenItem]:
    """Yue-GSM8K: {"question", "answer": "…####18"}; reference = the final number."""
    name = "yue-gsm8k"
    report = report if report is not None else LoadReport(name)
    files, root = _yue_files(name, Path(path).expanduser(), report)
    items: list[GenItem] = []
    for file in files:
        for item_id, where, rec in _file_records(file, root, report):
            try:
                rec = _object(where, rec)
                question = _text(rec, where, "question")
                if "answer" not in rec:
                    raise where.field_error("answer", "is missing")
                reference = _final_number(rec["answer"], where)
            except _RecordError as e:
                report.skip(e)
                continue
            items.append(GenItem(id=item_id, prompt=question, reference=reference, kind="math", lang="yue",
                                 source=name))
    return _finish(name, items, report)


# ---------------------------------------------------------------------------------------------
# Yue-TruthfulQA


def _mc1(rec: dict, where: _Where) -> tuple[list[str], int]:
    raw = rec["mc1_targets"]
    if isinstance(raw, dict) and "choices" in raw and "labels" in raw:  # Hugging Face form
        choices, labels = raw["choices"], raw["labels"]
        if not isinstance(choices, list) or not isinstance(labels, list) or len(choices) != len(labels):
            raise where.field_error("mc1_targets", '"choices" and "labels" must be lists of equal length')
    elif isinstance(raw, dict):  # original TruthfulQA form: {"<choice>": 1, "<choice>": 0, ...}
        choices, labels = list(raw.keys()), list(raw.values())
    else:
        raise where.field_error("mc1_targets", f"is {_type_name(raw)}, expected an object")
    choices = [_scalar_text(c, where, "mc1_targets") for c in choices]
    correct = [i for i, label in enumerate(labels) if label in (1, True, "1")]
    if len(choices) < 2 or len(correct) != 1:
        raise where.field_error("mc1_targets", f"has {len(choices)} choices and {len(correct)} marked correct, "
                                               "expected at least 2 choices and exactly 1 correct")
    return choices, correct[0]


def _split_answers(value: Any) -> list[str]:
    if isinstance(value, list):
        return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    if isinstance(value, str):
        return [part.strip() for part in re.split(r"[；;]", value) if part.strip()]
    return []


def load_yue_truthfulqa(path: Path, report: LoadReport | None = None) -> Items:
    """Yue-TruthfulQA: GenItem(kind="qa", reference=best_answer), or MCItems from "mc1_targets"."""
    name = "yue-truthfulqa"
    report = report if report is not None else LoadReport(name)
    files, root = _yue_files(name, Path(path).expanduser(), report)
    mode: bool | None = None  # True: multiple choice (mc1_targets), False: generation
    items: list = []
    for file in files:
        for item_id, where, rec in _file_records(file, root, report):
            try:
                rec = _object(where, rec)
                question = _text(rec, where, "question")
                has_mc = "mc1_targets" in rec
                if mode is not None and has_mc != mode:
                    problem = "is present, but earlier records have none" if has_mc else \
                        "is missing, but earlier records have it"
                    raise where.field_error("mc1_targets", problem)
                topic = rec.get("category", "") if isinstance(rec.get("category"), str) else ""
                if has_mc:
                    choices, answer = _mc1(rec, where)
                    item = MCItem(id=item_id, question=question, choices=choices, answer=answer,
                                  lang="yue", topic=topic, source=name)
                else:
                    reference = None
                    if rec.get("best_answer") is not None:
                        reference = _text(rec, where, "best_answer", nonempty=False)
                    if not reference:
                        fallback = _split_answers(rec.get("true", rec.get("correct_answers")))
                        if not fallback:
                            raise where.field_error("best_answer",
                                                    'is missing or empty, and "true" has no answer to use')
                        reference = fallback[0]
                    item = GenItem(id=item_id, prompt=question, reference=reference, kind="qa",
                                   lang="yue", source=name, topic=topic)
            except _RecordError as e:
                report.skip(e)
                continue
            mode = has_mc
            items.append(item)
    return _finish(name, items, report)


# ---------------------------------------------------------------------------------------------
# Yue-TRANS

_LANG_KEYS = {"en": "en", "english": "en", "zh": "zh", "mandarin": "zh", "chinese": "zh",
              "yue": "yue", "cantonese": "yue"}
_DIRECTION = re.compile(r"(?<![a-z])(en|zh|yue)[-_2](en|zh|yue)(?![a-z])")


def _languages(rec: dict, where: _Where) -> dict[str, tuple[str, str]]:
    """{language code: (field name, text)} for the language fields present (nulls ignored). The real
    zh->yue file keeps its Mandarin source under "en": an "en" text in Chinese characters is "zh"."""
    source = rec
    prefix = ""
    if isinstance(rec.get("translation"), dict):
        source, prefix = rec["translation"], "translation."
    found: dict[str, tuple[str, str]] = {}
    for key, value in source.items():
        code = _LANG_KEYS.get(str(key).lower())
        if code is None or value is None or code in found:
            continue
        text = _scalar_text(value, where, prefix + str(key))
        if text:
            found[code] = (prefix + str(key), text)
    if "en" in found and "zh" not in found and _chinese_written(found["en"][1]):
        found["zh"] = found.pop("en")
    return found


def _trans_pairs(rec: dict, where: _Where, file: Path, file_direction) -> list[tuple[str, str, str, str]]:
    if "src_lang" in rec or "tgt_lang" in rec:
        src = _text(rec, where, "src_lang").lower()
        tgt = _text(rec, where, "tgt_lang").lower()
        text = _text(rec, where, "source", "src")
        reference = _text(rec, where, "target", "tgt", "reference")
        return [(src, tgt, text, reference)]
    langs = _languages(rec, where)
    if file_direction is not None and all(code in langs for code in file_direction):
        directions = [file_direction]
    elif file_direction is not None and file_direction[1] != "yue":
        missing = next(code for code in file_direction if code not in langs)
        raise where.field_error(missing, f"is missing or empty (needed for {file_direction[0]}->"
                                         f"{file_direction[1]}, from the file name {file.name})")
    else:  # into Cantonese from whichever of "en" / "zh" the record has (the text decides which)
        if "yue" not in langs:
            raise where.field_error("yue", 'is missing or empty (a translation record needs the '
                                           'Cantonese text and "en" or "zh")')
        directions = [(code, "yue") for code in ("en", "zh") if code in langs]
        if not directions:
            raise where.field_error("en", 'is missing or empty, and so is "zh" (nothing to translate '
                                          'from into "yue")')
    return [(src, tgt, langs[src][1], langs[tgt][1]) for src, tgt in directions]


def load_yue_trans(path: Path, report: LoadReport | None = None) -> list[GenItem]:
    """Yue-TRANS: one GenItem(kind="translation") per direction present in each record."""
    name = "yue-trans"
    report = report if report is not None else LoadReport(name)
    files, root = _yue_files(name, Path(path).expanduser(), report)
    items: list[GenItem] = []
    for file in files:
        match = _DIRECTION.search(file.stem.lower())
        file_direction = (match.group(1), match.group(2)) if match and match.group(1) != match.group(2) else None
        for base_id, where, rec in _file_records(file, root, report):
            try:
                pairs = _trans_pairs(_object(where, rec), where, file, file_direction)
            except _RecordError as e:
                report.skip(e)
                continue
            for src, tgt, text, reference in pairs:
                items.append(GenItem(id=f"{base_id}.{src}-{tgt}", prompt=text, reference=reference,
                                     kind="translation", lang=tgt, src_lang=src, tgt_lang=tgt, source=name,
                                     topic=f"{src}-{tgt}"))
    return _finish(name, items, report)


# ---------------------------------------------------------------------------------------------
# HKCanto-Eval

_HEADER_ANSWER = {"answer", "label", "target", "答案"}
_HK_TASKS = {"canto-mmlu", "cultural", "dse", "hk-law", "professional", "phonetics", "mmlu"}
_ENGLISH_TASKS = {"mmlu"}  # data/mmlu/: the original English MMLU


def _hkcanto_files(path: Path, report: LoadReport) -> tuple[list[Path], Path]:
    name = "hkcanto-eval"
    _check_exists(name, path)
    if path.is_file():
        report.root = str(path.parent)
        return [path], path.parent
    report.root = str(path)
    found = sorted(p for p in path.rglob("*_test.csv") if p.is_file() and p.parent.name == "test")
    # HKCanto-Eval's data folders are those holding one of its tasks (<data>/<task>/test/): other
    # repositories beside the clone (Yue-Benchmark's MMLU_Cantonese/test/) are not HKCanto-Eval.
    data_roots = {p.parent.parent.parent for p in found if p.parent.parent.name in _HK_TASKS}
    found = [p for p in found if p.parent.parent.parent in data_roots or p.parent == path]
    english: dict[Path, int] = {}
    for p in found:
        task_dir = p.parent.parent
        if task_dir.name in _ENGLISH_TASKS and task_dir != path and task_dir not in path.parents:
            english[task_dir] = english.get(task_dir, 0) + 1
    for task_dir, n in sorted(english.items()):
        report.left_out.append(f"{_display(task_dir, path)}/ ({n} file(s)): the original English MMLU, not a "
                               f"Cantonese benchmark; to score it, give data_dir {task_dir} (items tagged en)")
    found = [p for p in found if p.parent.parent not in english]
    if not found:
        found = sorted(p for p in path.glob("*_test.csv") if p.is_file())
    if not found:
        only_english = " (only the English MMLU, left out)" if english else ""
        raise UserError(
            f"{name}: no test CSV files found under {path}{only_english}: looked for <task>/test/<subject>_test.csv "
            f"(recursively, for HKCanto-Eval's tasks {', '.join(sorted(_HK_TASKS - _ENGLISH_TASKS))}) and "
            f"<subject>_test.csv in {path}. Expected the layout of github.com/hon9kon9ize/hkcanto-eval data/ "
            f"(e.g. cultural/test/food_test.csv), cloned with Git LFS; {_NO_DOWNLOAD}")
    return found, path


def _csv_rows(path: Path, display: str) -> list[tuple[int, list[str]]]:
    """(first line number, cells) of each non-blank row; trailing empty cells dropped."""
    text = _read_text(path, display)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    previous_end = 0
    try:
        for row in reader:
            start, previous_end = previous_end + 1, reader.line_num
            while row and not row[-1].strip():
                row.pop()
            if row:
                rows.append((start, row))
    except csv.Error as e:
        raise _FileError(display, f"not valid CSV at line {reader.line_num} ({e})") from None
    return rows


def _hk_lang(task: str, subject: str, questions: list[str]) -> str:
    if subject.endswith("_en") or task in _ENGLISH_TASKS:
        return "en"
    if subject.endswith("_zh"):
        return "zh"
    if questions and sum(_english_written(q) for q in questions) * 2 > len(questions):
        return "en"  # phonetics: English questions about Cantonese
    return "yue"


def _hk_item(row: list[str], where: _Where, letters_max: int) -> tuple[str, list[str], int]:
    if len(row) < 4:
        raise where.error(f"has {len(row)} column(s), expected the question, at least 2 choices "
                          "and the answer letter")
    question, choices, answer = row[0].strip(), [c.strip() for c in row[1:-1]], row[-1]
    if not question:
        raise where.field_error("question", "(column 1) is empty")
    if len(choices) > letters_max:
        raise where.error(f"has {len(choices)} choices, expected at most {letters_max}")
    letters = list(_LETTERS[: len(choices)])
    try:
        answer_index = _answer_index(answer, letters, where, "answer")
    except _RecordError:
        raise where.field_error("answer", f"(column {len(row)}) is {_show(answer.strip())}, expected "
                                          f"one of {_letter_range(letters)}") from None
    return question, choices, answer_index


def load_hkcanto_eval(path: Path, report: LoadReport | None = None) -> list[MCItem]:
    """HKCanto-Eval: headerless CSV rows "question, choice 1..k, answer letter"."""
    name = "hkcanto-eval"
    report = report if report is not None else LoadReport(name)
    files, root = _hkcanto_files(Path(path).expanduser(), report)
    items: list[MCItem] = []
    for file in files:
        display = _display(file, root)
        try:
            rows = _csv_rows(file, display)
        except _FileError as e:
            report.skip_file(e)
            continue
        report.files.append(display)
        task = file.parent.parent.name if file.parent.name == "test" else ""
        subject = re.sub(r"_test$", "", file.stem)
        if rows and rows[0][1][-1].strip().lower() in _HEADER_ANSWER:
            rows = rows[1:]
        report.records += len(rows)
        lang = _hk_lang(task, subject, [row[0] for _, row in rows if row])
        prefix = f"{task}/" if task else ""
        for index, (line, row) in enumerate(rows):
            where = _Where(display, index, line)
            try:
                question, choices, answer = _hk_item(row, where, len(_LETTERS))
            except _RecordError as e:
                report.skip(e)
                continue
            items.append(MCItem(id=f"{prefix}{file.stem}-{index}", question=question, choices=choices,
                                answer=answer, lang=lang, topic=f"{prefix}{subject}", source=name))
    return _finish(name, items, report)


# ---------------------------------------------------------------------------------------------
# `limit`: a stable, stratified subset


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _allocate(sizes: dict, k: int) -> dict:
    """k items over strata of the given sizes: one each (when k allows), the rest in proportion to
    what each has left, largest remainders first; ties and a too-small k settled by a hash."""
    keys = sorted(sizes, key=lambda s: _digest(str(s)))
    if k < len(keys):
        return {s: 1 for s in keys[:k]}
    alloc = {s: 1 for s in keys}
    rest, spare = k - len(keys), {s: sizes[s] - 1 for s in keys}
    total = sum(spare.values())
    if rest and total:
        quota = {s: rest * spare[s] / total for s in keys}
        for s in keys:
            alloc[s] += math.floor(quota[s])
        left = k - sum(alloc.values())
        for s in sorted(keys, key=lambda s: (-(quota[s] - math.floor(quota[s])), _digest(str(s))))[:left]:
            alloc[s] += 1
    return alloc


def _pick(entries: list[tuple[str, tuple, int]], k: int, depth: int) -> list[int]:
    """Indices of k of the (digest, topic path, index) entries, stratified level by level."""
    if k >= len(entries):
        return [e[2] for e in entries]
    groups: dict = {}
    for e in entries:
        groups.setdefault(e[1][depth] if len(e[1]) > depth else None, []).append(e)
    if list(groups) == [None]:
        return [e[2] for e in sorted(entries)[:k]]
    if len(groups) == 1:
        return _pick(entries, k, depth + 1)
    out: list[int] = []
    for key, n in _allocate({key: len(group) for key, group in groups.items()}, k).items():
        out += _pick(groups[key], n, depth + 1)
    return out


def stratified_subset(items: list, limit: int | None) -> list:
    """`limit` of the items, every topic represented when the limit allows (see the module docstring);
    the same items give the same subset everywhere. No limit (None or 0): all of them."""
    if limit is None or limit == 0:
        return list(items)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise UserError(f"limit: {limit!r} is not a whole number of items")
    if limit >= len(items):
        return list(items)
    entries = [(_digest(f"{it.source}\0{it.id}"), tuple(p for p in it.topic.split("/") if p), i)
               for i, it in enumerate(items)]
    return [items[i] for i in sorted(_pick(entries, limit, 0))]


# ---------------------------------------------------------------------------------------------

LOADERS: dict[str, Callable[..., Items]] = {
    "yue-mmlu": load_yue_mmlu,
    "yue-arc-c": load_yue_arc_c,
    "yue-gsm8k": load_yue_gsm8k,
    "yue-truthfulqa": load_yue_truthfulqa,
    "yue-trans": load_yue_trans,
    "hkcanto-eval": load_hkcanto_eval,
}


def load_external_report(name: str, data_dir: str | Path, limit: int | None = None) -> tuple[Items, LoadReport]:
    """Load benchmark `name` (a key of LOADERS; "_" and case are forgiven) from files under `data_dir`
    (see the module docstring for the layouts searched), `limit` of them if given, and say what was
    read, skipped and left out. Raises UserError only when nothing loads."""
    key = name.strip().lower().replace("_", "-")
    if key not in LOADERS:
        raise UserError(f'unknown external benchmark "{name}"; known: {", ".join(LOADERS)}')
    report = LoadReport(key)
    items = LOADERS[key](Path(data_dir).expanduser(), report)
    if limit:
        items = stratified_subset(items, limit)
        report.limit, report.selected = limit, len(items)
        report.topics_selected = len({it.topic for it in items})
    return items, report


def load_external(name: str, data_dir: str | Path, limit: int | None = None) -> Items:
    """The items of `load_external_report` (malformed records skipped; see the report for which)."""
    return load_external_report(name, data_dir, limit)[0]
