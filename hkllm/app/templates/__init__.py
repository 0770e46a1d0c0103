"""Document templates as data: one YAML file per template in this folder.

    from hkllm.app.templates import load_all, load_template, render
    t = load_template("letter_reply")
    t.fields[0].name, t.fields[0].label["zh"], t.rules        # what the form asks; what is checked
    text = render(t, {"our_ref": "HAD WC/13/25/3", ...}, paragraphs=["你在…收悉。", "…"])

A template has `id`, `kind`, `language`, `label` {zh, en}, `fields` (each: `name`, `label` {zh, en},
`type` one of text | multiline | date | time | list | choice, `required`, for a choice `choices`,
and optionally a `default` and an `example`, the value the empty input shows greyed), `skeleton`
(the layout: `{field}` placeholders, `{field:zh}`-style formats for dates and times, and one
`{paragraphs}` slot for the model's prose), `paragraphs` (how the slot is numbered: from_second as
in 公函, from_first as in an agenda, none) and `rules` (ids from hkllm.app.format_check.RULES).
An optional `prompt` {zh|en} is the instruction the model gets, with the same placeholders. A bad
file is one `TemplateError` naming the file and the field.

Date formats: zh 二〇二六年十二月一日 · zh_month_day 十二月一日 · zh_press 2026年12月1日（星期二） ·
en 1 December 2026 · en_press Tuesday, December 1, 2026 · en_month_day December 1.
Time formats (value "17:47"): zh 17時47分 · en 17:47.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hkllm.errors import UserError

FOLDER = Path(__file__).resolve().parent
FIELD_TYPES = ("text", "multiline", "date", "time", "list", "choice")
NUMBERING = ("from_second", "from_first", "none")
DATE_FORMATS = ("zh", "zh_month_day", "zh_press", "en", "en_press", "en_month_day")
TIME_FORMATS = ("zh", "en")
SLOT = "paragraphs"


class TemplateError(UserError):
    """A template file that cannot be used: `file: field: problem`."""


@dataclass(frozen=True)
class Field:
    name: str
    label: dict[str, str]
    type: str
    required: bool
    choices: tuple[str, ...] = ()
    default: str | None = None
    example: str | tuple[str, ...] | None = None   # shown greyed in the empty input (placeholder)


@dataclass(frozen=True)
class Template:
    id: str
    kind: str
    language: str
    label: dict[str, str]
    fields: tuple[Field, ...]
    skeleton: str
    paragraphs: str
    rules: tuple[str, ...]
    prompt: dict[str, str]
    path: Path

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    @property
    def example(self) -> dict:
        """The fields' example values: what a filled-in form looks like."""
        return {f.name: list(f.example) if isinstance(f.example, tuple) else f.example
                for f in self.fields if f.example is not None}


def _label(value, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) and value.get(k).strip() for k in ("zh", "en")):
        raise TemplateError(f"{where}: needs a label with both `zh` and `en` text, got {value!r}")
    return {"zh": value["zh"], "en": value["en"]}


def _placeholders(text: str, where: str) -> list[tuple[str, str]]:
    try:
        return [(name, spec or "") for _, name, spec, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as e:
        raise TemplateError(f"{where}: malformed placeholder ({e}); write literal braces as {{{{ and }}}}") from None


def parse_template(data, path: Path) -> Template:
    """Validate one template's parsed YAML (`path` is only for messages)."""
    from hkllm.app.format_check import RULES

    name = path.name
    if not isinstance(data, dict):
        raise TemplateError(f"{name}: a template is a mapping of keys (id, label, fields, skeleton, rules)")
    known = {"id", "kind", "language", "label", "fields", "skeleton", "paragraphs", "rules", "prompt"}
    for key in data:
        if key not in known:
            raise TemplateError(f"{name}: {key}: unknown key; known keys: {', '.join(sorted(known))}")
    for key in ("id", "kind", "language", "label", "fields", "skeleton", "rules"):
        if key not in data:
            raise TemplateError(f"{name}: {key}: missing")
    for key in ("id", "kind", "language", "skeleton"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise TemplateError(f"{name}: {key}: must be non-empty text")
    if data["id"] != path.stem:
        raise TemplateError(f"{name}: id: {data['id']!r} must match the file name ({path.stem!r})")
    label = _label(data["label"], f"{name}: label")

    if not isinstance(data["fields"], list) or not data["fields"]:
        raise TemplateError(f"{name}: fields: must be a non-empty list")
    fields, seen = [], set()
    for i, f in enumerate(data["fields"]):
        where = f"{name}: fields[{i}]"
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", f["name"]):
            raise TemplateError(f"{where}: name: needs a name in lower_snake_case")
        where = f"{name}: fields.{f['name']}"
        extra = set(f) - {"name", "label", "type", "required", "choices", "default", "example"}
        if extra:
            raise TemplateError(f"{where}: {sorted(extra)[0]}: unknown key")
        if f["name"] in seen or f["name"] == SLOT:
            raise TemplateError(f"{where}: name: {'duplicate' if f['name'] in seen else 'reserved for the model prose'}")
        seen.add(f["name"])
        ftype = f.get("type")
        if ftype not in FIELD_TYPES:
            raise TemplateError(f"{where}: type: {ftype!r} is not one of {', '.join(FIELD_TYPES)}")
        if not isinstance(f.get("required"), bool):
            raise TemplateError(f"{where}: required: must be true or false")
        choices = f.get("choices", [])
        if ftype == "choice" and (not isinstance(choices, list) or not choices):
            raise TemplateError(f"{where}: choices: a choice field needs a list of choices")
        example = f.get("example")
        if isinstance(example, list) and ftype == "list" and all(isinstance(e, str) for e in example):
            example = tuple(example)
        elif example is not None and not isinstance(example, str):
            raise TemplateError(f"{where}: example: must be text{' or a list of text' if ftype == 'list' else ''}")
        field = Field(f["name"], _label(f.get("label"), f"{where}: label"), ftype, f["required"],
                      tuple(str(c) for c in choices), f.get("default"), example)
        if example is not None:
            try:
                _value(field, example)
            except TemplateError as e:
                raise TemplateError(f"{where}: example: {str(e).split(': ', 1)[1]}") from None
        fields.append(field)
    by_name = {f.name: f for f in fields}

    def check_placeholders(text: str, key: str, need_slot: bool):
        found = _placeholders(text, f"{name}: {key}")
        for field, spec in found:
            if field == SLOT:
                if spec:
                    raise TemplateError(f"{name}: {key}: {{paragraphs}} takes no format")
                continue
            if field not in by_name:
                raise TemplateError(f"{name}: {key}: {{{field}}} is not a field; fields: {', '.join(by_name)}")
            ftype = by_name[field].type
            allowed = DATE_FORMATS if ftype == "date" else TIME_FORMATS if ftype == "time" else ()
            if ftype in ("date", "time") and spec not in allowed:
                raise TemplateError(f"{name}: {key}: {{{field}:{spec}}}: a {ftype} needs a format, one of "
                                    f"{', '.join(allowed)}")
            if ftype not in ("date", "time") and spec:
                raise TemplateError(f"{name}: {key}: {{{field}:{spec}}}: only dates and times take a format")
        slots = sum(f == SLOT for f, _ in found)
        if need_slot and slots != 1:
            raise TemplateError(f"{name}: {key}: needs exactly one {{paragraphs}} slot for the model's prose, found {slots}")

    check_placeholders(data["skeleton"], "skeleton", True)
    paragraphs = data.get("paragraphs", "from_second")
    if paragraphs not in NUMBERING:
        raise TemplateError(f"{name}: paragraphs: {paragraphs!r} is not one of {', '.join(NUMBERING)}")
    rules = data["rules"]
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise TemplateError(f"{name}: rules: must be a list of rule ids")
    for r in rules:
        if r not in RULES:
            raise TemplateError(f"{name}: rules: {r!r} is not a format-checker rule; known: {', '.join(sorted(RULES))}")
    prompt = data.get("prompt", {}) or {}
    if not isinstance(prompt, dict) or not all(k in ("zh", "en") and isinstance(v, str) for k, v in prompt.items()):
        raise TemplateError(f"{name}: prompt: must map zh and/or en to text")
    for lang, text in prompt.items():
        check_placeholders(text, f"prompt.{lang}", False)
    return Template(data["id"], data["kind"], data["language"], label, tuple(fields), data["skeleton"], paragraphs,
                    tuple(rules), dict(prompt), path)


def load_file(path: str | Path) -> Template:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise TemplateError(f"{path.name}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise TemplateError(f"{path.name}:{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return parse_template(data, path)


@lru_cache(maxsize=1)
def load_all(folder: Path = FOLDER) -> dict[str, Template]:
    """Every template in `folder`, by id."""
    return {p.stem: load_file(p) for p in sorted(Path(folder).glob("*.yaml"))}


def load_template(template_id: str) -> Template:
    templates = load_all()
    if template_id not in templates:
        raise TemplateError(f"unknown template {template_id!r}; templates: {', '.join(templates)}")
    return templates[template_id]


# ---------------------------------------------------------------------------------------------
# Rendering

_WEEKDAYS_ZH = "一二三四五六日"


class _Date:
    def __init__(self, value: dt.date):
        self.value = value

    def __format__(self, spec: str) -> str:
        from hkllm.app.format_check import _zh_number, zh_date

        d = self.value
        month_en = d.strftime("%B")
        return {
            "zh": zh_date(d.year, d.month, d.day),
            "zh_month_day": f"{_zh_number(d.month)}月{_zh_number(d.day)}日",
            "zh_press": f"{d.year}年{d.month}月{d.day}日（星期{_WEEKDAYS_ZH[d.weekday()]}）",
            "en": f"{d.day} {month_en} {d.year}",
            "en_press": f"{d.strftime('%A')}, {month_en} {d.day}, {d.year}",
            "en_month_day": f"{month_en} {d.day}",
        }[spec]


class _Time:
    def __init__(self, hour: int, minute: int):
        self.hour, self.minute = hour, minute

    def __format__(self, spec: str) -> str:
        return f"{self.hour}時{self.minute:02d}分" if spec == "zh" else f"{self.hour:02d}:{self.minute:02d}"


class _Empty:
    def __format__(self, spec: str) -> str:
        return ""


def _value(field: Field, raw):
    if raw is None or raw == "" or raw == []:
        return _Empty()
    where = f"field {field.name} ({field.label['en']})"
    if field.type == "date":
        if isinstance(raw, dt.date):
            return _Date(raw)
        try:
            return _Date(dt.date.fromisoformat(str(raw)))
        except ValueError:
            raise TemplateError(f"{where}: {raw!r} is not a date (YYYY-MM-DD)") from None
    if field.type == "time":
        m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", str(raw).strip())
        if not m:
            raise TemplateError(f"{where}: {raw!r} is not a 24-hour time (HH:MM)")
        return _Time(int(m.group(1)), int(m.group(2)))
    if field.type == "choice" and str(raw) not in field.choices:
        raise TemplateError(f"{where}: {raw!r} is not one of {', '.join(field.choices)}")
    if field.type == "list":
        return list(raw) if isinstance(raw, (list, tuple)) else [s for s in str(raw).split("\n") if s.strip()]
    return str(raw)


def number_paragraphs(paragraphs: list[str], style: str) -> str:
    """Paragraphs joined by blank lines: from_second (公函: 2., 3., …), from_first (1., 2., …) or none."""
    out = []
    for i, p in enumerate(p.strip() for p in paragraphs):
        if style == "from_second":
            out.append(f"\u3000\u3000{p}" if i == 0 else f"{i + 1}.\t{p}")
        elif style == "from_first":
            out.append(f"{i + 1}.\t{p}")
        else:
            out.append(p)
    return "\n\n".join(out)


def values_for(template: Template, values: dict) -> dict:
    """Checked, formattable values: required fields present, dates and times parsed."""
    unknown = set(values) - {f.name for f in template.fields}
    if unknown:
        raise TemplateError(f"{template.id}: {sorted(unknown)[0]}: not a field of this template")
    out = {}
    for f in template.fields:
        raw = values.get(f.name, f.default)
        if f.required and (raw is None or raw == "" or raw == []):
            raise TemplateError(f"{template.id}: {f.name}: required ({f.label['zh']} / {f.label['en']})")
        out[f.name] = _value(f, raw)
    return out


def render(template: Template, values: dict, paragraphs: list[str]) -> str:
    """The skeleton filled with `values` and the model's `paragraphs`. A line whose placeholders are
    all empty optional fields is left out; a list field puts one item per line, aligned."""
    vals = values_for(template, values)
    body = number_paragraphs(paragraphs, template.paragraphs)
    lines = []
    for line in template.skeleton.rstrip("\n").split("\n"):
        found = _placeholders(line, template.id)
        names = [n for n, _ in found if n != SLOT]
        if names and SLOT not in (n for n, _ in found) and all(isinstance(vals[n], _Empty) for n in names):
            continue
        lists = [n for n in names if isinstance(vals[n], list)]
        fmt = dict(vals, **{SLOT: body})
        for n in lists:
            prefix = line[: line.index("{" + n)]
            indent = "\u3000" * len(prefix) if re.search(r"[^\x00-\x7f]", prefix) else " " * len(prefix)
            fmt[n] = ("\n" + indent).join(vals[n])
        lines.append(line.format(**fmt))
    return "\n".join(lines) + "\n"


def prompt(template: Template, values: dict, language: str | None = None) -> str:
    """The instruction for the model, filled with `values` ("" if the template has none)."""
    lang = language or ("en" if template.language == "en" else "zh")
    text = template.prompt.get(lang) or next(iter(template.prompt.values()), "")
    vals = values_for(template, values)
    return text.format(**{k: "、".join(v) if isinstance(v, list) else v for k, v in vals.items()})
