"""Loaders for external Cantonese benchmarks that are already on disk. Nothing is ever downloaded.

    load_external("yue-mmlu", "~/Yue-Benchmark")          -> list[MCItem]
    load_external("hkcanto-eval", "~/hkeval2025/data")     -> list[MCItem]
    LOADERS["yue-gsm8k"](Path("~/yue_benchmark_v1"))      -> list[GenItem]

MCItem is a multiple-choice question, scored by the log-likelihood of each choice; GenItem is an
open generation scored against a reference (kind "math", "translation" or "qa").

Every loader takes a directory (or one file) and finds the benchmark's files in it. Problems in
the user's files raise `hkllm.errors.UserError` with one clear line: a missing directory or file
names the directory and the file names looked for; a malformed record names the file (relative to
the directory given), the record number (0-based, as in the item ids; plus the line for CSV and
JSONL files) and the field, e.g.
    Yue-MMLU/yue_mmlu.json record 12: field "answer" is "E", expected one of A-D

Item ids are stable: "<file stem>-<record's own id>" where the record has one ("no" in Yue-Benchmark,
"id" in Hugging Face-style files) and it is unique in its file, else "<file stem>-<index>".

Yue-Benchmark (Jiang et al. 2024, "How Far Can Cantonese NLP Go?"), github.com/jiangjyjy/Yue-Benchmark
(data/latest_data/<Benchmark>/) and huggingface.co/datasets/BillBao/Yue-Benchmark
(yue_benchmark_v1/<Benchmark>/*.json). Each benchmark folder holds JSON files, each a JSON array of
records (JSON Lines, one record a line, is accepted too). The folder is looked for, with any
capitalisation and "-" or "_", as
    <data_dir> itself, <data_dir>/<Benchmark>, <data_dir>/yue_benchmark_v1/<Benchmark>,
    <data_dir>/data/latest_data/<Benchmark>
and all *.json / *.jsonl files in it are read, in name order. Formats:
  yue-mmlu        Yue-MMLU/<subject>.json (some named <subject>_review4_publish1.json), records
                  {"question", "A", "B", "C", "D", "answer": "B", "no": "3"} (read from the repo).
                  topic = the subject (file stem without "_reviewN_publishN").
  yue-arc-c       Yue-ARC-C/Yue-ARC-C.json (folder also Yue_ARC_C). NOT read directly (the file is not
                  in the public index we could search): the same record form as Yue-MMLU is assumed,
                  because code that reads that file indexes it by "no" like the MMLU files and the
                  repo's ARC predictions are four lettered choices with a letter gold. The Hugging Face
                  ARC form {"question", "choices": {"text": [...], "label": [...]}, "answerKey"} and
                  {"choices": [...], "answer": letter or index} are accepted too.
  yue-gsm8k       Yue-GSM8K/Yue-GSM8K.json, records {"question", "answer": "...####18"} (read from the
                  repo). reference = the number after the last "####", commas and "$" removed; an
                  answer that is just a number is taken as is.
  yue-truthfulqa  Yue-TruthfulQA/Yue-TruthfulQA.json, records {"question", "true": "a；b；…",
                  "false": "…", "best_answer"} (read from the repo): there is no multiple-choice form,
                  so GenItem(kind="qa", reference=best_answer; else the first "true" answer). If the
                  records carry TruthfulQA's "mc1_targets" ({"choices": [...], "labels": [0, 1, ...]}
                  or {"<choice>": 0/1, ...}) they load as MCItems instead (all records must agree).
  yue-trans       Yue-TRANS/*.json. NOT read directly: the Hugging Face config has text columns "en"
                  and "yue" (seen in code that loads it), and the paper's directions are en->yue and
                  zh->yue. Accepted record forms: language keys {"en"|"zh"|"yue": text} (also
                  "english", "mandarin", "chinese", "cantonese"; null values are ignored), the same
                  nested under "translation", or explicit {"src_lang", "tgt_lang", "source", "target"}.
                  One GenItem per direction present: if the file name names a direction ("en-yue",
                  "zh_yue", "yue-en", ...) that one, else X->yue for each of "en", "zh" present.
                  prompt = the source text (the caller adds the instruction); lang = tgt_lang.

HKCanto-Eval (2025), github.com/hon9kon9ize/hkeval2025 (data/<task>/{dev,test}/<subject>_{dev,test}.csv,
tasks canto-mmlu, cultural, dse, hk-law, professional, phonetics; read from the repo and its
scripts/eval.py). CSV files without a header, each row: question, choice 1..k, answer letter (k = 4,
or 5 with "None of the above" in phonetics). Every <...>/test/*_test.csv under <data_dir>
(recursively; dev/ and test_old/ are not read) is loaded; a folder of *_test.csv files, or one CSV
file, works too. A first row whose last cell is "answer" is taken as a header. topic =
"<task>/<subject>", lang "en" / "zh" for subjects ending "_en" / "_zh" (DSE, professional), else
"yue"; ids "<task>/<file stem>-<row index>". The repo's canto-nlp JSON tasks (translation,
summarization, sentiment) are not loaded.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from hkllm.errors import UserError

__all__ = ["MCItem", "GenItem", "LOADERS", "load_external"]


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


Items = Union[list[MCItem], list[GenItem]]

_LETTERS = "ABCDEFGHIJ"
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_NO_DOWNLOAD = "these loaders read files you already have; nothing is downloaded"


# ---------------------------------------------------------------------------------------------
# Messages and fields


class _Where:
    """Where a record is, for error messages: file (as shown), 0-based record index, line."""

    def __init__(self, display: str, index: int, line: int | None = None):
        self.display, self.index, self.line = display, index, line

    def __str__(self) -> str:
        line = f" (line {self.line})" if self.line is not None else ""
        return f"{self.display} record {self.index}{line}"

    def error(self, problem: str) -> UserError:
        return UserError(f"{self}: {problem}")

    def field_error(self, field: str, problem: str) -> UserError:
        return UserError(f'{self}: field "{field}" {problem}')


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


def _answer_index(value: Any, labels: list[str], where: _Where, field: str) -> int:
    """An answer given as a label ("B", " b.", "(C)") or, for list choices, an int index."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(labels):
            return value
        raise where.field_error(field, f"is {value}, expected an index 0-{len(labels) - 1}")
    if isinstance(value, str):
        key = value.strip().strip("().:：。 ").upper()
        upper = [label.upper() for label in labels]
        if key in upper:
            return upper.index(key)
    raise where.field_error(field, f"is {_show(value)}, expected one of {_letter_range(labels)}")


# ---------------------------------------------------------------------------------------------
# Reading files


def _read_text(path: Path, display: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{display}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{display}: cannot read ({e.strerror})") from None


def _json_records(path: Path, display: str) -> list[tuple[_Where, Any]]:
    """A JSON array of records, or JSON Lines (one record a line), with where each one is."""
    text = _read_text(path, display)
    if path.suffix.lower() == ".jsonl":
        out: list[tuple[_Where, Any]] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{display} line {lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
            out.append((_Where(display, len(out), lineno), record))
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{display}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    if not isinstance(data, list):
        raise UserError(f"{display}: expected a JSON array of records, got {_type_name(data)}")
    return [(_Where(display, i), record) for i, record in enumerate(data)]


def _objects(records: list[tuple[_Where, Any]]) -> list[tuple[_Where, dict]]:
    for where, record in records:
        if not isinstance(record, dict):
            raise where.error(f"expected a JSON object, got {_type_name(record)}")
    return records  # type: ignore[return-value]


def _own_ids(stem: str, records: list[tuple[_Where, dict]]) -> list[str]:
    """ "<stem>-<own id>" when every record has a unique "no"/"id", else "<stem>-<index>"."""
    own = []
    for where, rec in records:
        value = rec.get("no", rec.get("id"))
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
            own = None
            break
        own.append(str(value).strip())
    if own is None or len(set(own)) != len(own):
        own = [str(where.index) for where, _ in records]
    return [f"{stem}-{key}" for key in own]


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


# Yue-Benchmark folders, and where under the given directory they may be.
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


def _yue_files(name: str, path: Path) -> tuple[list[Path], Path]:
    """The benchmark's JSON files under `path` (a directory or one file), and the root for display."""
    _check_exists(name, path)
    if path.is_file():
        return [path], path.parent
    folder_names = _YUE_DIRS[name]
    wanted = {_norm(n) for n in folder_names}
    folders = [path] if _norm(path.name) in wanted else []
    for parents in _YUE_PARENTS:
        parent = path.joinpath(*parents)
        found = _child_dir(parent, wanted)
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
        f"{name}: no *.json files found under {path}: looked in {looked} (or {path} being the {main} "
        f"folder, or a {main}*.json file in it). Expected the layout of github.com/jiangjyjy/Yue-Benchmark "
        f"(data/latest_data/{main}/) or huggingface.co/datasets/BillBao/Yue-Benchmark "
        f"(yue_benchmark_v1/{main}/); {_NO_DOWNLOAD}")


def _require_items(name: str, items: list, files: list[Path], root: Path) -> None:
    if not items:
        shown = ", ".join(_display(f, root) for f in files)
        raise UserError(f"{name}: {shown} under {root} contain no records")


# ---------------------------------------------------------------------------------------------
# Multiple-choice records (Yue-MMLU, Yue-ARC-C)


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
    return choices, _answer_index(rec[answer_field], letters, where, answer_field)


_REVIEW_SUFFIX = re.compile(r"_review\d+_publish\d+$")


def _load_yue_mc(name: str, path: Path, subject_topic: bool) -> list[MCItem]:
    files, root = _yue_files(name, path)
    items: list[MCItem] = []
    for file in files:
        display = _display(file, root)
        records = _objects(_json_records(file, display))
        ids = _own_ids(file.stem, records)
        topic = _REVIEW_SUFFIX.sub("", file.stem) if subject_topic else ""
        for item_id, (where, rec) in zip(ids, records):
            question = _text(rec, where, "question")
            choices, answer = _mc_choices(rec, where)
            items.append(MCItem(id=item_id, question=question, choices=choices, answer=answer,
                                lang="yue", topic=topic, source=name))
    _require_items(name, items, files, root)
    return items


def load_yue_mmlu(path: Path) -> list[MCItem]:
    """Yue-MMLU: {"question", "A".."D", "answer": letter, "no"}; topic = the subject (file stem)."""
    return _load_yue_mc("yue-mmlu", Path(path).expanduser(), subject_topic=True)


def load_yue_arc_c(path: Path) -> list[MCItem]:
    """Yue-ARC-C: assumed the Yue-MMLU record form (see the module docstring)."""
    return _load_yue_mc("yue-arc-c", Path(path).expanduser(), subject_topic=False)


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


def load_yue_gsm8k(path: Path) -> list[GenItem]:
    """Yue-GSM8K: {"question", "answer": "…####18"}; reference = the final number."""
    name = "yue-gsm8k"
    files, root = _yue_files(name, Path(path).expanduser())
    items: list[GenItem] = []
    for file in files:
        display = _display(file, root)
        records = _objects(_json_records(file, display))
        for item_id, (where, rec) in zip(_own_ids(file.stem, records), records):
            question = _text(rec, where, "question")
            if "answer" not in rec:
                raise where.field_error("answer", "is missing")
            items.append(GenItem(id=item_id, prompt=question, reference=_final_number(rec["answer"], where),
                                 kind="math", lang="yue", source=name))
    _require_items(name, items, files, root)
    return items


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


def load_yue_truthfulqa(path: Path) -> Items:
    """Yue-TruthfulQA: GenItem(kind="qa", reference=best_answer), or MCItems from "mc1_targets"."""
    name = "yue-truthfulqa"
    files, root = _yue_files(name, Path(path).expanduser())
    mode: bool | None = None  # True: multiple choice (mc1_targets), False: generation
    items: list = []
    for file in files:
        display = _display(file, root)
        records = _objects(_json_records(file, display))
        for item_id, (where, rec) in zip(_own_ids(file.stem, records), records):
            question = _text(rec, where, "question")
            has_mc = "mc1_targets" in rec
            if mode is None:
                mode = has_mc
            elif has_mc != mode:
                problem = "is present, but earlier records have none" if has_mc else \
                    "is missing, but earlier records have it"
                raise where.field_error("mc1_targets", problem)
            topic = rec.get("category", "") if isinstance(rec.get("category"), str) else ""
            if mode:
                choices, answer = _mc1(rec, where)
                items.append(MCItem(id=item_id, question=question, choices=choices, answer=answer,
                                    lang="yue", topic=topic, source=name))
                continue
            reference = None
            if rec.get("best_answer") is not None:
                reference = _text(rec, where, "best_answer", nonempty=False)
            if not reference:
                fallback = _split_answers(rec.get("true", rec.get("correct_answers")))
                if not fallback:
                    raise where.field_error("best_answer", 'is missing or empty, and "true" has no answer to use')
                reference = fallback[0]
            items.append(GenItem(id=item_id, prompt=question, reference=reference, kind="qa",
                                 lang="yue", source=name))
    _require_items(name, items, files, root)
    return items


# ---------------------------------------------------------------------------------------------
# Yue-TRANS

_LANG_KEYS = {"en": "en", "english": "en", "zh": "zh", "mandarin": "zh", "chinese": "zh",
              "yue": "yue", "cantonese": "yue"}
_DIRECTION = re.compile(r"(?<![a-z])(en|zh|yue)[-_2](en|zh|yue)(?![a-z])")


def _languages(rec: dict, where: _Where) -> dict[str, tuple[str, str]]:
    """{language code: (field name, text)} for the language fields present (nulls ignored)."""
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
    return found


def load_yue_trans(path: Path) -> list[GenItem]:
    """Yue-TRANS: one GenItem(kind="translation") per direction present in each record."""
    name = "yue-trans"
    files, root = _yue_files(name, Path(path).expanduser())
    items: list[GenItem] = []
    for file in files:
        display = _display(file, root)
        records = _objects(_json_records(file, display))
        match = _DIRECTION.search(file.stem.lower())
        file_direction = (match.group(1), match.group(2)) if match and match.group(1) != match.group(2) else None
        for base_id, (where, rec) in zip(_own_ids(file.stem, records), records):
            if "src_lang" in rec or "tgt_lang" in rec:
                src = _text(rec, where, "src_lang").lower()
                tgt = _text(rec, where, "tgt_lang").lower()
                text = _text(rec, where, "source", "src")
                reference = _text(rec, where, "target", "tgt", "reference")
                pairs = [(src, tgt, text, reference)]
            else:
                langs = _languages(rec, where)
                if file_direction is not None:
                    directions = [file_direction]
                else:
                    if "yue" not in langs:
                        raise where.field_error("yue", 'is missing or empty (a translation record needs the '
                                                       'Cantonese text and "en" or "zh")')
                    directions = [(code, "yue") for code in ("en", "zh") if code in langs]
                    if not directions:
                        raise where.field_error("en", 'is missing or empty, and so is "zh" (nothing to translate '
                                                      'from into "yue")')
                pairs = []
                for src, tgt in directions:
                    for code in (src, tgt):
                        if code not in langs:
                            raise where.field_error(code, f"is missing or empty (needed for {src}->{tgt}, "
                                                          f"from the file name {file.name})")
                    pairs.append((src, tgt, langs[src][1], langs[tgt][1]))
            for src, tgt, text, reference in pairs:
                items.append(GenItem(id=f"{base_id}.{src}-{tgt}", prompt=text, reference=reference,
                                     kind="translation", lang=tgt, src_lang=src, tgt_lang=tgt, source=name))
    _require_items(name, items, files, root)
    return items


# ---------------------------------------------------------------------------------------------
# HKCanto-Eval

_HEADER_ANSWER = {"answer", "label", "target", "答案"}


def _hkcanto_files(path: Path) -> tuple[list[Path], Path]:
    name = "hkcanto-eval"
    _check_exists(name, path)
    if path.is_file():
        return [path], path.parent
    files = sorted(p for p in path.rglob("*_test.csv") if p.is_file() and p.parent.name == "test")
    if not files:
        files = sorted(p for p in path.glob("*_test.csv") if p.is_file())
    if not files:
        raise UserError(
            f"{name}: no test CSV files found under {path}: looked for <task>/test/<subject>_test.csv "
            f"(recursively) and <subject>_test.csv in {path}. Expected the layout of "
            f"github.com/hon9kon9ize/hkeval2025 data/ (e.g. cultural/test/food_test.csv); {_NO_DOWNLOAD}")
    return files, path


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
        raise UserError(f"{display} line {reader.line_num}: not valid CSV ({e})") from None
    return rows


def load_hkcanto_eval(path: Path) -> list[MCItem]:
    """HKCanto-Eval: headerless CSV rows "question, choice 1..k, answer letter"."""
    name = "hkcanto-eval"
    files, root = _hkcanto_files(Path(path).expanduser())
    items: list[MCItem] = []
    for file in files:
        display = _display(file, root)
        task = file.parent.parent.name if file.parent.name == "test" else ""
        subject = re.sub(r"_test$", "", file.stem)
        lang = "en" if subject.endswith("_en") else "zh" if subject.endswith("_zh") else "yue"
        rows = _csv_rows(file, display)
        if rows and rows[0][1][-1].strip().lower() in _HEADER_ANSWER:
            rows = rows[1:]
        prefix = f"{task}/" if task else ""
        for index, (line, row) in enumerate(rows):
            where = _Where(display, index, line)
            if len(row) < 4:
                raise where.error(f"has {len(row)} column(s), expected the question, at least 2 choices "
                                  "and the answer letter")
            question, choices, answer = row[0].strip(), [c.strip() for c in row[1:-1]], row[-1]
            if not question:
                raise where.field_error("question", "(column 1) is empty")
            letters = list(_LETTERS[: len(choices)])
            if len(choices) > len(_LETTERS):
                raise where.error(f"has {len(choices)} choices, expected at most {len(_LETTERS)}")
            try:
                answer_index = _answer_index(answer, letters, where, "answer")
            except UserError:
                raise where.field_error("answer", f"(column {len(row)}) is {_show(answer.strip())}, expected "
                                                  f"one of {_letter_range(letters)}") from None
            items.append(MCItem(id=f"{prefix}{file.stem}-{index}", question=question, choices=choices,
                                answer=answer_index, lang=lang, topic=f"{prefix}{subject}", source=name))
    _require_items(name, items, files, root)
    return items


# ---------------------------------------------------------------------------------------------

LOADERS: dict[str, Callable[[Path], Items]] = {
    "yue-mmlu": load_yue_mmlu,
    "yue-arc-c": load_yue_arc_c,
    "yue-gsm8k": load_yue_gsm8k,
    "yue-truthfulqa": load_yue_truthfulqa,
    "yue-trans": load_yue_trans,
    "hkcanto-eval": load_hkcanto_eval,
}


def load_external(name: str, data_dir: str | Path) -> Items:
    """Load benchmark `name` (a key of LOADERS; "_" and case are forgiven) from files under `data_dir`
    (a directory, or one of the benchmark's files). Raises UserError for missing or malformed files."""
    key = name.strip().lower().replace("_", "-")
    if key not in LOADERS:
        raise UserError(f'unknown external benchmark "{name}"; known: {", ".join(LOADERS)}')
    return LOADERS[key](Path(data_dir).expanduser())
