"""The typed config layer (hkllm/config.py), and every YAML file shipped under recipes/ loading through it."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from hkllm import config
from hkllm.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    schedule: Literal["cosine", "wsd"] = "cosine"


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    shares: dict[str, float] = field(default_factory=dict)
    path: str | None = None
    sources: list[str | dict] = field(default_factory=list)
    flag: bool = False


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text,message", [
    ("name: x\ninner: {lr: abc}\n", "field 'inner.lr': expected a number, got 'abc'"),
    ("name: x\ninner: {steps: 1.5}\n", "field 'inner.steps': expected a whole number, got 1.5"),
    ("name: x\ninner: {schedule: linear}\n", "field 'inner.schedule' must be one of cosine, wsd, got 'linear'"),
    ("name: x\nshares: {yue: lots}\n", "field 'shares.yue': expected a number, got 'lots'"),
    ("name: x\nsources: [a, 3]\n", "field 'sources[1]': expected a string or a mapping, got 3"),
    ("name: x\nflag: yes please\n", "field 'flag': expected true or false, got 'yes please'"),
    ("name: x\ninner: [1]\n", "field 'inner': expected a mapping, got list"),
    ("name: x\ninner: {stpes: 3}\n", "unknown field 'inner.stpes' (did you mean 'inner.steps'?)"),
    ("inner: {}\n", "field 'name' is required"),
    ("- a\n", "field '(top level)': expected a mapping, got list"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_errors_name_the_file_the_field_and_the_type(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        config.load(path, Outer)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_values_are_checked_and_kept():
    built = config.build(Outer, {"name": "x", "inner": {"lr": "3e-4"}, "shares": {"yue": 1}, "path": None}, "f.yaml")
    assert built.inner.lr == 3e-4          # PyYAML reads 3e-4 as a string; a float field takes it as the number
    assert built.shares == {"yue": 1}      # an int stays an int where a float is expected (hashes do not move)
    assert built.inner.steps == 10 and built.sources == []
    assert config.build(Outer, {"name": "x", "inner": None}, "f.yaml").inner == Inner()   # `inner:` left empty


def test_overrides_are_parsed_by_the_field_type(tmp_path):
    path = write(tmp_path, "inner: {steps: 3}\n")
    built = config.load(path, Outer, ["name=runs/x", "inner.lr=3e-4", "path=null", "shares.yue=0.5",
                                      "sources=[a.jsonl, {path: b}]", "flag=true", "inner.schedule=wsd"])
    assert (built.name, built.inner.lr, built.path, built.shares) == ("runs/x", 3e-4, None, {"yue": 0.5})
    assert built.sources == ["a.jsonl", {"path": "b"}] and built.flag is True and built.inner.steps == 3
    for item, message in [("inner.lr=abc", "command line: field 'inner.lr': expected a number, got 'abc'"),
                          ("inner.steps=many", "field 'inner.steps': expected a whole number, got 'many'"),
                          ("inner.schedule=linear", "must be one of cosine, wsd"),
                          ("inner.lrr=1", "unknown field 'inner.lrr' (did you mean 'inner.lr'?)"),
                          ("name.first=a", "'name' has no sub-fields"),
                          ("inner.lr", "must look like key=value")]:
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            config.load(path, Outer, ["name=x", item])
    on_object = config.apply_overrides(config.build(Outer, {"name": "x"}, "f"), ["inner.steps=7", "path=a"])
    assert on_object.inner.steps == 7 and on_object.path == "a"


def test_training_recipe_types_reach_no_trainer(tmp_path):
    from hkllm.train.recipe import load

    path = write(tmp_path, "stage: base\nout: x\ntrain: {lr: 3.0e-3}\n")
    with pytest.raises(UserError, match=r"command line: field 'train.lr': expected a number, got 'abc'"):
        load(path, ["train.lr=abc"])
    with pytest.raises(UserError, match=r"field 'train.max_steps': expected a whole number, got 'ten'"):
        load(path, ["train.max_steps=ten"])
    with pytest.raises(UserError, match=rf"{path}: field 'stage' must be one of base, cpt, sft, dpo"):
        load(write(tmp_path, "stage: pretrain\nout: x\n"))
    recipe = load(write(tmp_path, "stage: base\nout: x\ntrain: {lr: 3e-4}\n"), ["model.path=null", "train.packing=false"])
    assert recipe.train.lr == 3e-4 and recipe.model.path is None and recipe.train.packing is False


def test_suite_options_and_server_settings_are_typed(tmp_path):
    from hkllm.eval.run import load_suite

    with pytest.raises(UserError, match=r"field 'tasks.knowledge.max_tokens': expected a whole number, got 'many'"):
        load_suite(write(tmp_path, "tasks:\n  knowledge: {path: k.jsonl, max_tokens: many}\n"))
    with pytest.raises(UserError, match=r"unknown option 'tasks.knowledge.pth' \(did you mean 'tasks.knowledge.path'\?\)"):
        load_suite(write(tmp_path, "tasks:\n  knowledge: {pth: k.jsonl}\n"))
    with pytest.raises(UserError, match=r"field 'external\[0\].name' is required"):
        load_suite(write(tmp_path, "external:\n  - {limit: 5}\n"))

    from hkllm.cli import build_parser
    from hkllm.serve.cli import settings_from

    parser = build_parser()
    settings = settings_from(parser.parse_args(["serve", "m", "--max-queue", "5", "--consistency", "off", "--no-auth"]))
    assert (settings.max_queue, settings.consistency, settings.auth) == (5, False, False)
    defaults = settings_from(parser.parse_args(["serve", "m"]))
    assert defaults == type(defaults)()              # every default is Settings' own
    bad = write(tmp_path, "max_queue: lots\n")
    with pytest.raises(UserError, match=rf"{bad}: field 'max_queue': expected a whole number, got 'lots'"):
        settings_from(parser.parse_args(["serve", "m", "--settings", str(bad)]))


def test_serve_help_shows_the_settings_defaults(capsys):
    from hkllm.cli import build_parser
    from hkllm.serve.gateway import Settings

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    s = Settings()
    assert f"Retry-After (default {s.max_queue})" in text and f"accepted (default {s.max_output_tokens})" in text
    assert f"cut off (default {s.request_timeout_s:g})" in text and f"valid (default {s.cache_ttl_s:g})" in text


# --- every YAML under recipes/ ---------------------------------------------------------------

def _accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(path))


def _train(path):
    from hkllm.train.recipe import load

    return load(path)


def _data(path):
    from hkllm.data.recipe import load_recipe

    return load_recipe(path)


def _instructions(path):
    from hkllm.data.instructions import load_spec

    return load_spec(path)


def _suite(path):
    from hkllm.eval.run import load_suite

    return load_suite(path)


def _gate(path):
    from hkllm.eval.gate import load_policy

    return load_policy(path)


def _safety(path):
    from hkllm.eval.tasks import load_policy

    return load_policy(path)


def _gateway_guards(path):
    from hkllm.serve.guards import GuardPolicy

    return GuardPolicy.load(path).version


def _guard(path):
    from hkllm.safety.guard import Policy

    return Policy.load(path)


# Which loader reads which file (first match); a new YAML under recipes/ must be added here.
LOADERS = [("accelerate/*.yaml", _accelerate), ("data/demo.yaml", _data), ("data/instructions.yaml", _instructions),
           ("*/gate.yaml", _gate), ("*/*suite.yaml", _suite), ("eval/safety_policy.yaml", _safety),
           ("safety/guard_policy.yaml", _guard), ("safety/gateway_guards.yaml", _gateway_guards),
           ("tiny/*.yaml", _train), ("scale/*.yaml", _train), ("smollm2/*.yaml", _train)]
RECIPES = sorted(p.relative_to(REPO / "recipes").as_posix() for p in (REPO / "recipes").rglob("*.yaml"))


def test_the_recipes_folder_holds_what_this_test_loads():
    assert "scale/qwen2.5-7b-cpt.yaml" in RECIPES and "scale/deepseek-v3-cpt.yaml" in RECIPES
    assert len(RECIPES) >= 19


@pytest.mark.parametrize("name", RECIPES)
def test_every_shipped_yaml_loads(name):
    loader = next(load for pattern, load in LOADERS if fnmatch.fnmatch(name, pattern))
    assert loader(REPO / "recipes" / name) is not None
    first = (REPO / "recipes" / name).read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ")                    # each opens with the command that uses it (or what it is)
