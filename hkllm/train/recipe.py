"""Training recipes: YAML files whose every field can be overridden as key=value.

    hkllm train cpt recipes/tiny/cpt.yaml train.max_steps=50 data.replay_share=0

Values after `=` are parsed as YAML (numbers, true/false, [lists]). A key that is not a field
of the recipe is an error that names it and suggests the closest field, so a typo never
silently trains the wrong thing.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hkllm.errors import UserError

STAGES = ("base", "cpt", "sft", "dpo")


@dataclass
class ModelSpec:
    path: str | None = None          # Hugging Face folder or hub id; None: a new model from the fields below
    arch: str = "llama"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 768     # a multiple of 256 (GGUF q8_0 needs multiples of 32)
    max_position: int = 1024
    vocab_size: int = 8000           # size of the tokenizer trained for a new model


@dataclass
class DataSpec:
    # Each entry: {path: FILE|FOLDER|"pydoc:", variety: optional, split: train|heldout|all}
    train: list = field(default_factory=list)
    replay: list = field(default_factory=list)   # original-domain data replayed against forgetting
    replay_share: float = 0.0                    # share of training characters taken from `replay`
    generic_share: float = 0.0                   # sft: share of generic (non-chat) text mixed in


@dataclass
class TrainSpec:
    max_steps: int = 300
    batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 256
    lr: float = 1e-3
    schedule: str = "cosine"         # cosine | wsd (warmup-stable-decay); warmup re-warms a continued run
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    precision: str = "auto"          # auto | fp32 | bf16 | fp16: auto = bf16 where the hardware has it (hkllm/precision.py)
    seed: int = 0
    save_steps: int = 100
    log_steps: int = 10
    beta: float = 0.1                # dpo
    packing: bool = True             # sft: pack conversations without attention across them


@dataclass
class Recipe:
    stage: str
    out: str
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    eval: list = field(default_factory=list)     # held-out sources for bits-per-byte per variety
    eval_max_chars: int = 20000                  # per variety, to keep evaluation quick
    train: TrainSpec = field(default_factory=TrainSpec)


_NESTED = {"model": ModelSpec, "data": DataSpec, "train": TrainSpec}


def _set(target: dict, dotted: str, value: Any, origin: str) -> None:
    parts = dotted.split(".")
    cls = Recipe
    node = target
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            if dotted == "train.bf16":
                raise UserError(f"{origin}: 'train.bf16' was replaced by 'train.precision' (auto | fp32 | bf16 | fp16); "
                                "auto picks bf16 only where the hardware computes it natively")
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean '{'.'.join(parts[:i] + close)}'?)" if close else f" (fields: {', '.join(names)})"
            raise UserError(f"{origin}: unknown recipe field '{'.'.join(parts[:i + 1])}'{hint}")
        if i == len(parts) - 1:
            node[part] = value
        else:
            if cls is not Recipe or part not in _NESTED:
                raise UserError(f"{origin}: '{'.'.join(parts[:i + 1])}' has no sub-fields")
            node = node.setdefault(part, {})
            cls = _NESTED[part]


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for k, v in data.items():
        if isinstance(v, dict) and (prefix + k) in _NESTED:
            items += _flatten(v, prefix + k + ".")
        else:
            items.append((prefix + k, v))
    return items


def load(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise UserError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    merged: dict = {}
    for key, value in _flatten(raw):
        _set(merged, key, value, str(path))
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like key=value (e.g. train.max_steps=50)")
        key, value = item.split("=", 1)
        _set(merged, key.strip(), yaml.safe_load(value), "command line")
    try:
        recipe = Recipe(**{k: (_NESTED[k](**v) if k in _NESTED else v) for k, v in merged.items()})
    except TypeError as e:
        raise UserError(f"{path}: {e}") from None
    if recipe.stage not in STAGES:
        raise UserError(f"{path}: field 'stage' must be one of {', '.join(STAGES)}, got {recipe.stage!r}")
    if recipe.train.schedule not in ("cosine", "wsd"):
        raise UserError(f"{path}: field 'train.schedule' must be cosine or wsd")
    from hkllm.precision import CHOICES

    if recipe.train.precision not in CHOICES:
        raise UserError(f"{path}: field 'train.precision' must be one of {', '.join(CHOICES)}, got {recipe.train.precision!r}")
    if not 0 <= recipe.data.replay_share < 1:
        raise UserError(f"{path}: field 'data.replay_share' must be in [0, 1)")
    return recipe


def to_yaml(recipe: Recipe, command: str) -> str:
    return f"# {command}\n" + yaml.safe_dump(dataclasses.asdict(recipe), allow_unicode=True, sort_keys=False)
