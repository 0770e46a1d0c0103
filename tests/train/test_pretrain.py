import json

import pytest

from hkllm.errors import UserError
from hkllm.train.data import pack, with_replay
from hkllm.train.pretrain import run
from hkllm.train.recipe import load

from .conftest import TINY_TRAIN, make_recipe


def test_base_run_writes_a_complete_model_folder(base_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out, metrics = base_run
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "train_log.jsonl",
                 "loss.png", "metrics.json", "recipe.yaml"):
        assert (out / name).exists(), name
    assert (out / "recipe.yaml").read_text().startswith("# test")
    tok = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    gen = GenerationConfig.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<|im_end|>") in gen.eos_token_id
    assert gen.pad_token_id == tok.pad_token_id and gen.do_sample is True
    AutoModelForCausalLM.from_pretrained(out)
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [2, 4, 6, 8]
    assert all(r["tokens_per_second"] > 0 for r in logs)
    assert metrics["bpb_after"]["en"] < metrics["bpb_before"]["en"]  # it learned something
    recorded = json.loads((out / "metrics.json").read_text())["precision"]
    assert recorded["precision"] == "fp32" and recorded["reason"]   # tests pin HKLLM_PRECISION=fp32


def test_cpt_continues_from_a_run_folder_with_replay(tmp_path, base_run, texts):
    base, _ = base_run
    recipe = load(make_recipe(tmp_path, "cpt", out=str(tmp_path / "cpt"), model={"path": str(base)},
                              data={"train": [str(texts["hk"])], "replay": [str(texts["general"])], "replay_share": 0.25},
                              eval=[{"path": str(texts["hk"]), "split": "all"}, {"path": str(texts["general"]), "split": "all"}],
                              train={**TINY_TRAIN, "schedule": "wsd"}))
    metrics = run(recipe, "test")
    assert set(metrics["bpb_after"]) == {"yue", "zh-hant", "en"}
    chars = metrics["train_characters"]
    assert chars["replay"] / sum(chars.values()) == pytest.approx(0.25, abs=0.05)


def test_with_replay_hits_the_share():
    local = [{"text": "x" * 100, "variety": "yue"}] * 30
    replay = [{"text": "y" * 37, "variety": "en"}] * 5
    mixed = with_replay(local, replay, 0.2)
    replay_chars = sum(len(r["text"]) for r in mixed if r["variety"] == "en")
    assert replay_chars / sum(len(r["text"]) for r in mixed) == pytest.approx(0.2, abs=0.01)
    assert with_replay(local, replay, 0.0) == local


def test_pack_makes_full_blocks_with_separators(base_run):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_run[0])
    blocks = pack(["hello world"] * 20, tok, 8)
    assert blocks.shape[1] == 8 and (blocks == tok.convert_tokens_to_ids("<|endoftext|>")).any()


def test_pack_never_cuts_a_document_that_fits_in_a_block():
    """Chats shorter than a block stay whole (a cut one teaches an answer without its question);
    the long documents fill the gaps, and no token of either is lost before the last block."""
    import random

    from transformers import AutoTokenizer

    from hkllm import assets

    tok = AutoTokenizer.from_pretrained(assets.path("data/models/tiny-base"))
    sep = tok.convert_tokens_to_ids("<|endoftext|>")
    rng = random.Random(0)
    chats = [f"<|im_start|>user\n問題{i}：{'香港' * rng.randint(1, 25)}<|im_end|>" for i in range(200)]
    long_docs = ["The Python tutorial, section " + " ".join(str(rng.random()) for _ in range(60)) for _ in range(30)]
    blocks = pack(chats + long_docs, tok, 64).tolist()
    def spaced(ids):
        return " " + " ".join(map(str, ids)) + " "

    rows = [spaced(b) for b in blocks]
    cut = [c for c in chats if not any(spaced(tok(c, add_special_tokens=False)["input_ids"] + [sep]) in r for r in rows)]
    assert not cut, cut[:2]
    total = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in chats + long_docs)
    assert total - 64 < len(blocks) * 64 <= total
    assert pack(chats, tok, 64).shape[1] == 64      # no long documents to fill with: chats run on, cut


def test_a_packed_document_sees_only_itself():
    """With the blocks' position ids, transformers' Llama gives a document packed after another the
    logits it gets alone (block-diagonal attention), where plain packing lets it see its neighbour."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hkllm import assets
    from hkllm.train.data import separator
    from hkllm.train.pretrain import Blocks

    path = assets.path("data/models/tiny-base")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    sep = separator(tok)
    first, second = (tok(t, add_special_tokens=False)["input_ids"] for t in ("香港有十八個區。", "What is the capital?"))
    block = torch.tensor(first + [sep] + second + [sep])
    with torch.no_grad():
        alone = model(torch.tensor([second])).logits[0]
        item = Blocks([block], sep)[0]
        masked = model(item["input_ids"][None], position_ids=item["position_ids"][None]).logits[0]
        plain = model(block[None]).logits[0]
    tail = slice(len(first) + 1, len(first) + 1 + len(second))
    assert torch.allclose(masked[tail], alone, atol=1e-4)
    assert not torch.allclose(plain[tail], alone, atol=1e-2)
    assert Blocks([block])[0].keys() == {"input_ids", "labels"}


def test_recipe_typos_and_bad_overrides_are_named(tmp_path, texts):
    path = make_recipe(tmp_path, "base", out="x", data={"train": [str(texts["general"])]})
    with pytest.raises(UserError, match=r"unknown recipe field 'train.max_step'.*did you mean 'train.max_steps'"):
        load(path, ["train.max_step=3"])
    with pytest.raises(UserError, match="key=value"):
        load(path, ["train.max_steps"])
    assert load(path, ["train.max_steps=3", "data.replay_share=0.1"]).train.max_steps == 3


def test_missing_model_path_is_a_clear_error(tmp_path, texts):
    recipe = load(make_recipe(tmp_path, "cpt", out=str(tmp_path / "c"), model={"path": str(tmp_path / "nope")},
                              data={"train": [str(texts["hk"])]}, train=TINY_TRAIN))
    with pytest.raises(UserError, match="not a loadable Hugging Face causal LM"):
        run(recipe, "test")


def test_cpt_renders_chat_records_with_the_models_template(tmp_path, base_run, texts):
    from transformers import AutoTokenizer

    from hkllm.train.data import read_sources, render_chats

    base, _ = base_run
    chats = tmp_path / "chat.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"問題{i}"},
                                                      {"role": "assistant", "content": f"答案{i}"}], "lang": "yue"},
                                        ensure_ascii=False) + "\n" for i in range(40)), encoding="utf-8")
    records = read_sources([{"path": str(chats), "split": "all"}], "train")
    assert len(records) == 40 and records[0]["text"] is None and records[0]["variety"] == "yue"
    render_chats(records, AutoTokenizer.from_pretrained(base))
    assert records[0]["text"].startswith("<|im_start|>user\n問題") and "<|im_start|>assistant\n答案" in records[0]["text"]
    recipe = load(make_recipe(tmp_path, "cpt", out=str(tmp_path / "cpt"), model={"path": str(base)},
                              data={"train": [str(texts["hk"]), {"path": str(chats), "split": "all"}]},
                              eval=[{"path": str(texts["hk"]), "split": "all"}], train=TINY_TRAIN))
    assert run(recipe, "test")["train_characters"]["yue"] > 0
    with pytest.raises(UserError, match="need model.path"):
        run(load(make_recipe(tmp_path, "base", out=str(tmp_path / "b"), data={"train": [{"path": str(chats), "split": "all"}]},
                             train=TINY_TRAIN)), "test")


def test_max_chars_caps_a_source_with_a_stable_draw(tmp_path):
    from hkllm.train.data import read_source

    src = tmp_path / "big.jsonl"
    src.write_text("".join(json.dumps({"text": f"文件{i:03d}" + "字" * 95}, ensure_ascii=False) + "\n" for i in range(100)),
                   encoding="utf-8")
    capped = read_source({"path": str(src), "split": "all", "max_chars": 1000}, "train")
    assert len(capped) == 10 and capped == read_source({"path": str(src), "split": "all", "max_chars": 1000}, "train")
    assert [r["text"][:5] for r in capped] != [f"文件{i:03d}" for i in range(10)]   # drawn, not the first ten


def test_tasks_keeps_the_chats_whose_task_matches(tmp_path):
    from hkllm.train.data import read_source

    src = tmp_path / "chat.jsonl"
    tasks = ["fact_qa", "refuse:weapons", "answer:benign_tech", "general_qa", None]
    src.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"問{i}"},
                                                    {"role": "assistant", "content": f"答{i}"}],
                                       **({"task": t} if t else {})}, ensure_ascii=False) + "\n"
                           for i, t in enumerate(tasks)), encoding="utf-8")
    kept = read_source({"path": str(src), "split": "all", "tasks": ["refuse:*", "answer:*", "general_qa"]}, "train")
    assert [r["task"] for r in kept] == ["refuse:weapons", "answer:benign_tech", "general_qa"]
    assert [r["messages"][0]["content"] for r in kept] == ["問1", "問2", "問3"]
    with pytest.raises(UserError, match="no record has a task matching"):
        read_source({"path": str(src), "split": "all", "tasks": ["letter"]}, "train")
    with pytest.raises(UserError, match="tasks must be a non-empty list"):
        read_source({"path": str(src), "split": "all", "tasks": "general_qa"}, "train")


def test_stdlib_source_reads_docstrings_without_importing():
    import sys

    from hkllm.train.data import read_source

    train, heldout = read_source("stdlib:", "train"), read_source("stdlib:", "heldout")
    assert len(train) > 1000 and 0.05 < len(heldout) / (len(train) + len(heldout)) < 0.15
    assert {r["variety"] for r in train + heldout} == {"en"}
    texts = [r["text"] for r in train + heldout]
    assert any(t.startswith("JSON (JavaScript Object Notation)") for t in texts)     # the json package's docstring
    assert min(map(len, texts)) >= 200 and "antigravity" not in sys.modules     # parsed, never imported


QWEN_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1}


def test_cpt_and_sft_keep_the_base_models_sampling_defaults(tmp_path, base_run, texts, chat_file):
    """Issue 10: vLLM reads generation_config.json for its defaults; a stage must not replace Qwen's."""
    import shutil

    from transformers import AutoTokenizer

    from hkllm.train import sft

    base = tmp_path / "qwen-like"
    shutil.copytree(base_run[0], base)
    tok = AutoTokenizer.from_pretrained(base)
    (base / "generation_config.json").write_text(json.dumps(
        {**QWEN_SAMPLING, "bos_token_id": tok.bos_token_id, "eos_token_id": [tok.eos_token_id], "pad_token_id": 0}))
    short = {**TINY_TRAIN, "max_steps": 2, "save_steps": 100}
    run(load(make_recipe(tmp_path, "cpt", out=str(tmp_path / "cpt"), model={"path": str(base)},
                         data={"train": [str(texts["hk"])]}, eval=[{"path": str(texts["hk"]), "split": "all"}],
                         train=short)), "test")
    sft.run(load(make_recipe(tmp_path, "sft", out=str(tmp_path / "sft"), model={"path": str(tmp_path / "cpt")},
                             data={"train": [str(chat_file)]}, eval=[{"path": str(texts["hk"]), "split": "all"}],
                             train=short)), "test")
    for stage in ("cpt", "sft"):
        gen = json.loads((tmp_path / stage / "generation_config.json").read_text())
        assert {k: gen.get(k) for k in QWEN_SAMPLING} == QWEN_SAMPLING, stage
        assert "max_new_tokens" not in gen, stage  # nothing of hkllm's own added
        # only the ids change: the base's stop id kept, the end-of-turn id added, pad follows the tokenizer
        assert gen["eos_token_id"][0] == tok.eos_token_id, stage
        assert tok.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"], stage
        assert gen["pad_token_id"] == tok.pad_token_id, stage
