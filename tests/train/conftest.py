"""Tiny fixtures for training tests: a few KB of text, a tiny tokenizer and model, recipes."""

import json
from pathlib import Path

import pytest
import yaml

YUE = ["我哋今日去咗旺角食嘢，仲行咗好耐街。", "佢話聽日唔使返工，可以喺屋企休息。", "呢度啲嘢好好食，下次再嚟。",
       "你知唔知點去中環？搭港鐵最快。", "阿媽叫我記得帶遮，因為落緊雨。"]
SWC = ["市民可於辦事處辦理登記手續。", "本署將於下星期一起暫停服務。", "政府今日公布新的防疫措施。"]
EN = ["The library opens at ten in the morning.", "Please keep your ticket until the end of the journey.",
      "Python lists are mutable sequences.", "A dictionary maps keys to values."]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def texts(tmp_path):
    hk = write_jsonl(tmp_path / "hk.jsonl", [{"text": t * 3, "variety": "yue"} for t in YUE * 4]
                     + [{"text": t * 3, "variety": "zh-hant"} for t in SWC * 4])
    general = write_jsonl(tmp_path / "general.jsonl", [{"text": t * 3, "variety": "en"} for t in EN * 6])
    return {"hk": hk, "general": general}


@pytest.fixture
def chat_file(tmp_path):
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in [("你好", "你好！有咩可以幫到你？"), ("Hi", "Hello! How can I help?"), ("幾點開門？", "朝早十點開門。")] * 4]
    return write_jsonl(tmp_path / "chat.jsonl", rows)


@pytest.fixture
def pref_file(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "你食咗飯未？"}], "chosen": [{"role": "assistant", "content": "食咗喇，多謝。"}],
             "rejected": [{"role": "assistant", "content": "我已经吃过了。"}]}] * 8
    return write_jsonl(tmp_path / "pref.jsonl", rows)


TINY_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 256, "vocab_size": 600,
              "max_position": 256}
TINY_TRAIN = {"max_steps": 8, "batch_size": 2, "seq_len": 32, "lr": 3e-3, "log_steps": 2, "save_steps": 4, "precision": "fp32"}


def make_recipe(tmp_path: Path, stage: str, **body) -> Path:
    path = tmp_path / f"{stage}.yaml"
    path.write_text(f"# hkllm train {stage} {path}\n" + yaml.safe_dump({"stage": stage, **body}, allow_unicode=True))
    return path


@pytest.fixture
def base_run(tmp_path, texts):
    """A tiny model trained from scratch for a few steps (shared by several tests)."""
    from hkllm.train.pretrain import run
    from hkllm.train.recipe import load

    recipe = load(make_recipe(tmp_path, "base", out=str(tmp_path / "base"), model=TINY_MODEL,
                              data={"train": [str(texts["general"]), str(texts["hk"])]},
                              eval=[{"path": str(texts["general"]), "split": "all"}], train=TINY_TRAIN))
    metrics = run(recipe, "test")
    return tmp_path / "base", metrics
