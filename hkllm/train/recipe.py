"""Training recipes: YAML files whose every field can be overridden as key=value.

    hkllm train cpt recipes/tiny/cpt.yaml train.max_steps=50 data.replay_share=0

Values after `=` are parsed by the field's type (hkllm/config.py): `train.lr=3e-4` is a float,
`model.path=null` is None, lists and mappings are YAML (`data.train=[a.jsonl]`). A key that is not
a field of the recipe is an error that names it and suggests the closest field, and a value of the
wrong type (`train.lr=abc`) is an error that names the field and the type, so a typo never
silently trains the wrong thing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from hkllm import config
from hkllm.errors import UserError
from hkllm.precision import CHOICES

STAGES = ("base", "cpt", "sft", "dpo")
Stage = Literal[STAGES]
Precision = Literal[CHOICES]      # auto | fp32 | bf16 | fp16
# A source: a path (FILE | FOLDER | "pydoc:" | "stdlib:") or {path, variety, split: train|heldout|all, max_chars, tasks}
SourceSpec = str | dict


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
    # Each entry: {path: FILE|FOLDER|"pydoc:"|"stdlib:", variety: optional, split: train|heldout|all,
    #              max_chars: optional cap, tasks: optional task patterns (hkllm/train/data.py)}
    train: list[SourceSpec] = field(default_factory=list)
    replay: list[SourceSpec] = field(default_factory=list)   # original-domain data replayed against forgetting
    replay_share: float = 0.0                    # share of training characters taken from `replay`
    generic_share: float = 0.0                   # sft: share of generic (non-chat) text mixed in


@dataclass
class TrainSpec:
    max_steps: int = 300
    batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 256
    lr: float = 1e-3
    schedule: Literal["cosine", "wsd"] = "cosine"   # cosine | wsd (warmup-stable-decay); warmup re-warms a continued run
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    precision: Precision = "auto"    # auto | fp32 | bf16 | fp16: auto = bf16 where the hardware has it (hkllm/precision.py)
    seed: int = 0
    save_steps: int = 100
    log_steps: int = 10
    beta: float = 0.1                # dpo
    sft_weight: float = 0.0          # dpo: weight of the chosen answers' NLL beside the DPO loss (RPO;
                                     # TRL loss_type [sigmoid, sft]): keeps a small model's text from drifting
    packing: bool = True             # sft: pack conversations without attention across them
    gradient_checkpointing: bool = False   # recompute activations in the backward pass: memory for time
                                     # (~40% slower); for big models on GPUs, not small ones (TRL's default is on)


@dataclass
class Recipe:
    stage: Stage
    out: str
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    eval: list[SourceSpec] = field(default_factory=list)   # held-out sources for bits-per-byte per variety
    eval_max_chars: int = 20000                  # per variety, to keep evaluation quick
    train: TrainSpec = field(default_factory=TrainSpec)


RENAMED = {"train.bf16": "'train.bf16' was replaced by 'train.precision' (auto | fp32 | bf16 | fp16); "
                         "auto picks bf16 only where the hardware computes it natively"}


def load(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe, apply `key=value` overrides; every field checked against its type."""
    recipe = config.load(path, Recipe, overrides, what="recipe field", renamed=RENAMED, missing="recipe")
    if not 0 <= recipe.data.replay_share < 1:
        raise UserError(f"{path}: field 'data.replay_share' must be in [0, 1)")
    return recipe


def to_yaml(recipe: Recipe, command: str) -> str:
    return f"# {command}\n" + yaml.safe_dump(dataclasses.asdict(recipe), allow_unicode=True, sort_keys=False)
