"""One typed config layer: YAML files and `key=value` overrides → dataclasses, errors that name the field.

    from hkllm import config
    recipe = config.load("recipes/tiny/cpt.yaml", Recipe, ["train.lr=3e-4"], what="recipe field")
    config.apply_overrides(recipe, ["train.max_steps=50"])      # the same, on a built object

Every recipe, suite, policy and server setting is a dataclass; its field types are the schema:
int, float, bool, str, Path, Any, `X | None`, unions, `Literal[...]`, `list[X]`, `dict[str, X]`
and nested dataclasses. A value of the wrong type, an unknown field (with a did-you-mean) or a
missing required field is one `ConfigError` line naming the file and the dotted field:

    recipes/tiny/cpt.yaml: field 'train.lr': expected a number, got 'abc'

Overrides are parsed by the field's type (`train.lr=3e-4` is a float, `model.path=null` is None,
`out=runs/x` stays a string) and checked the same way. A default is stated once, in its
dataclass, with a comment that says what the field is.
Cross-field rules (a share in [0, 1), a file that must exist) stay with each loader.

Read top to bottom: 1. errors, 2. reading YAML, 3. checking a value against a type, 4. building
a dataclass, 5. overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from hkllm.errors import UserError

# --- 1. errors --------------------------------------------------------------------------------


class ConfigError(UserError):
    """`where: field 'a.b': message`. Also built from one string, so it survives pickling out of a worker."""

    def __init__(self, where: str | Path, field: str | None = None, message: str | None = None):
        if field is None:
            super().__init__(f"{where}: {message}" if message else str(where))
        else:
            message = message or "is not valid"
            joint = " " if message.startswith(("must ", "is ", "needs ", "was ")) else ": "
            super().__init__(f"{where}: field '{field}'{joint}{message}")


def suggest(name: str, known, full: str | None = None, label: str = "fields") -> str:
    """`did you mean 'x'?` for a close match among `known` (dotted like `full`), else `fields: a, b, ...`."""
    known = list(known)
    close = difflib.get_close_matches(str(name), known, n=1)
    if close:
        prefix = full.rsplit(".", 1)[0] + "." if full and "." in full else ""
        return f"did you mean '{prefix}{close[0]}'?"
    return f"{label}: {', '.join(known)}"


# --- 2. reading YAML --------------------------------------------------------------------------


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The parsed file; `{what} not found: PATH` or `PATH: not valid YAML: ...` as a UserError."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e})") from None


# --- 3. checking a value against a type -------------------------------------------------------

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")   # '3e-4': YAML 1.1 (PyYAML) reads it as a string
_NONE = ("null", "none", "~")


def _origin(tp):
    return typing.get_origin(tp)


def _is_union(tp) -> bool:
    return _origin(tp) in (Union, types.UnionType)


def describe(tp) -> str:
    """A type as a user reads it: 'a whole number', 'a list of strings', 'one of cosine, wsd'."""
    if tp is Any:
        return "anything"
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        text = " or ".join(describe(a) for a in args)
        return text + " or null" if len(args) < len(typing.get_args(tp)) else text
    if _origin(tp) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if _origin(tp) is list or tp is list:
        args = typing.get_args(tp)
        return f"a list of {_plural(describe(args[0]))}" if args and args[0] is not Any else "a list"
    if _origin(tp) is dict or tp is dict:
        args = typing.get_args(tp)
        return f"a mapping to {_plural(describe(args[1]))}" if len(args) == 2 and args[1] is not Any else "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
            Path: "a path (string)"}.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(text: str) -> str:
    special = {"a whole number": "whole numbers", "a number": "numbers", "a string": "strings", "a mapping": "mappings",
               "true or false": "true/false values", "a list": "lists", "a path (string)": "paths"}
    return special.get(text) or " or ".join(special.get(part, part) for part in text.split(" or "))


def _fail(tp, value, where, name):
    if _origin(tp) is Literal:
        raise ConfigError(where, name or "(top level)", f"must be {describe(tp)}, got {value!r}")
    raise ConfigError(where, name or "(top level)", f"expected {describe(tp)}, got {value!r}")


def check(value: Any, tp, where: str | Path, name: str, what: str = "field", renamed: dict | None = None) -> Any:
    """`value` if it is of type `tp` (nested dataclasses built, numeric strings made floats), else ConfigError."""
    if tp is Any:
        return value
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            _fail(tp, value, where, name)
        candidates = [a for a in args if a is not type(None)]
        for arg in candidates:
            if len(candidates) == 1 or (dataclasses.is_dataclass(arg) and isinstance(value, dict)):
                return check(value, arg, where, name, what, renamed)   # the only candidate, or the mapping meant
            try:
                return check(value, arg, where, name, what, renamed)
            except ConfigError:
                continue
        _fail(tp, value, where, name)
    if _origin(tp) is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        _fail(tp, value, where, name)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, name, what, renamed)
    if tp is list or _origin(tp) is list:
        if not isinstance(value, list):
            _fail(tp, value, where, name)
        (item,) = typing.get_args(tp) or (Any,)
        return [check(v, item, where, f"{name}[{i}]", what, renamed) for i, v in enumerate(value)]
    if tp is dict or _origin(tp) is dict:
        if not isinstance(value, dict):
            _fail(tp, value, where, name)
        key, item = typing.get_args(tp) or (Any, Any)
        out = {}
        for k, v in value.items():
            dotted = f"{name}.{k}" if name else str(k)
            out[check(k, key, where, dotted)] = check(v, item, where, dotted, what, renamed)
        return out
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value          # an int stays an int: what a recipe hashes must not change
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value              # a typing construct this layer does not know: not checked
    _fail(tp, value, where, name)


# --- 4. building a dataclass -------------------------------------------------------------------


def fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    """The fields a config file may set (not `metadata={"internal": True}`), with resolved types."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if not f.metadata.get("internal") and f.init}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def validate(cls, data: Any, where: str | Path, prefix: str = "", what: str = "field",
             renamed: dict[str, str] | None = None) -> dict:
    """The checked keyword arguments for `cls` from a mapping (nested dataclasses built)."""
    if not isinstance(data, dict):
        raise ConfigError(where, prefix or "(top level)", f"expected a mapping, got {type(data).__name__}")
    known = fields(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            if renamed and dotted in renamed:
                raise ConfigError(where, None, renamed[dotted])
            raise ConfigError(where, None, f"unknown {what} '{dotted}' ({suggest(str(key), known, dotted)})")
        f, tp = known[key]
        if value is None and dataclasses.is_dataclass(tp) and not _required(f):
            continue              # `steps:` left empty: the defaults
        kwargs[key] = check(value, tp, where, dotted, what, renamed)
    for name, (f, _) in known.items():
        if _required(f) and name not in kwargs:
            raise ConfigError(where, f"{prefix}.{name}" if prefix else name, "is required")
    return kwargs


def build(cls, data: Any, where: str | Path, prefix: str = "", what: str = "field",
          renamed: dict[str, str] | None = None):
    """An instance of dataclass `cls` from a mapping, every field checked against its type."""
    return cls(**validate(cls, data, where, prefix, what, renamed))


def load(path: str | Path, cls, overrides=(), what: str = "field", renamed: dict[str, str] | None = None,
         missing: str = "config"):
    """Read `path`, apply `key=value` overrides, build `cls`. An empty file is an empty mapping."""
    data = read_yaml(path, missing)
    data = {} if data is None else data
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(path, "(top level)", f"expected a mapping, got {type(data).__name__}")
        for item in overrides:
            key, text = split_override(item)
            _override_mapping(data, cls, key, text, what, renamed)
    return build(cls, data, path, what=what, renamed=renamed)


# --- 5. overrides -----------------------------------------------------------------------------

ORIGIN = "command line"


def split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise UserError(f"override '{item}' must look like key=value (e.g. train.max_steps=50)")
    key, text = item.split("=", 1)
    return key.strip(), text


def parse_value(text: str, tp, name: str, where: str = ORIGIN) -> Any:
    """A command-line string as a value of type `tp`, then checked as a file's value would be."""
    import yaml

    stripped = text.strip()
    if _is_union(tp):
        args = typing.get_args(tp)
        if type(None) in args and stripped.lower() in _NONE + ("",):
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return parse_value(text, rest[0], name, where)
        if str in rest or Path in rest:
            value = text          # a string wins: no guessing at what 'abc' or '1' meant
            return check(value, tp, where, name)
    if tp is str:
        return text
    if tp is Path:
        return Path(text)
    if tp is bool:
        words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
        if stripped.lower() in words:
            return words[stripped.lower()]
        _fail(tp, text, where, name)
    if tp is int:
        try:
            return int(stripped)
        except ValueError:
            _fail(tp, text, where, name)
    if tp is float:
        try:
            return float(stripped)
        except ValueError:
            _fail(tp, text, where, name)
    if _origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp)):
        return check(stripped, tp, where, name)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(where, name, f"not valid YAML ({e})") from None
    return check(value, tp, where, name)


def _walk(cls, key: str, what: str, renamed: dict[str, str] | None, where: str = ORIGIN):
    """(parts, types along the way) for a dotted key; unknown parts get a did-you-mean."""
    parts, tp, trail = key.split("."), cls, []
    for i, part in enumerate(parts):
        dotted = ".".join(parts[: i + 1])
        if dataclasses.is_dataclass(tp):
            known = fields(tp)
            if part not in known:
                if renamed and key in renamed:
                    raise ConfigError(where, None, renamed[key])
                raise ConfigError(where, None, f"unknown {what} '{dotted}' ({suggest(part, known, dotted)})")
            tp = known[part][1]
        elif tp is dict or _origin(tp) is dict:
            tp = (typing.get_args(tp) or (Any, Any))[1]
        else:
            raise UserError(f"{where}: '{'.'.join(parts[:i])}' has no sub-fields")
        trail.append(tp)
    return parts, trail


def _override_mapping(data: dict, cls, key: str, text: str, what: str, renamed) -> None:
    parts, trail = _walk(cls, key, what, renamed)
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = parse_value(text, trail[-1], key)


def apply_overrides(obj, overrides, what: str = "field", renamed: dict[str, str] | None = None, where: str = ORIGIN):
    """Set `key=value` overrides on a built dataclass instance, each parsed and checked by its field's type."""
    for item in overrides:
        key, text = split_override(item)
        parts, trail = _walk(type(obj), key, what, renamed, where)
        node = obj
        for part in parts[:-1]:
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        value = parse_value(text, trail[-1], key, where)
        if isinstance(node, dict):
            node[parts[-1]] = value
        else:
            setattr(node, parts[-1], value)
    return obj
