import json

import pytest
import torch

from hkllm.errors import UserError
from hkllm.train.chat_data import convert, load_conversations, load_preferences
from hkllm.train.recipe import load

from .conftest import TINY_TRAIN, make_recipe, write_jsonl


def test_assistant_only_mask_covers_the_answer_and_its_end_token(base_run):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_run[0])
    msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    enc = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(masked) == "你好！<|im_end|>"


def test_sft_packs_conversations_without_attention_between_them(tmp_path, base_run, chat_file):
    from hkllm.train.sft import build_trainer, setup

    recipe = load(make_recipe(tmp_path, "sft", out=str(tmp_path / "sft"), model={"path": str(base_run[0])},
                              data={"train": [str(chat_file)]}, train={**TINY_TRAIN, "seq_len": 64}))
    model, tok, dataset, _ = setup(recipe)
    trainer = build_trainer(recipe, model, tok, dataset, tmp_path / "sft")
    batch = next(iter(trainer.get_train_dataloader()))
    pos = batch["position_ids"][0]
    starts = [i for i in range(1, len(pos)) if pos[i] == 0]
    assert starts, "expected several conversations packed into one row"
    s = starts[0]
    end = starts[1] if len(starts) > 1 else len(pos)
    model.train()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"][:1], position_ids=batch["position_ids"][:1]).logits[0, s:end]
        alone = model(input_ids=batch["input_ids"][:1, s:end]).logits[0]
    assert torch.allclose(packed, alone, atol=1e-4)
    # only assistant tokens carry a loss
    labels = batch["labels"][0]
    assert (labels != -100).any() and (labels == -100).any()


def test_sft_and_dpo_runs(tmp_path, base_run, chat_file, pref_file, texts):
    from hkllm.train import dpo, sft

    evals = [{"path": str(texts["hk"]), "split": "all"}]
    s = sft.run(load(make_recipe(tmp_path, "sft", out=str(tmp_path / "sft"), model={"path": str(base_run[0])},
                                 data={"train": [str(chat_file)], "replay": [str(texts["general"])], "generic_share": 0.05},
                                 eval=evals, train=TINY_TRAIN)), "test")
    assert s["steps"] == TINY_TRAIN["max_steps"] and (tmp_path / "sft" / "model.safetensors").exists()
    assert s["conversations"] == 13  # 12 chats + 1 generic text item
    d = dpo.run(load(make_recipe(tmp_path, "dpo", out=str(tmp_path / "dpo"), model={"path": str(tmp_path / "sft")},
                                 data={"train": [str(pref_file)]}, eval=evals, train={**TINY_TRAIN, "lr": 1e-3})), "test")
    assert d["pairs"] == 8 and d["reward_accuracy"] is not None
    assert "yue" in d["bpb_after"]
    assert d["final_loss"] < 1.0                     # the DPO loss alone starts at log 2
    # sft_weight adds the chosen answers' NLL (several nats per token for this model) to the loss
    r = dpo.run(load(make_recipe(tmp_path, "dpo", out=str(tmp_path / "rpo"), model={"path": str(tmp_path / "sft")},
                                 data={"train": [str(pref_file)]}, eval=evals,
                                 train={**TINY_TRAIN, "lr": 1e-3, "sft_weight": 1.0})), "test")
    assert r["final_loss"] > d["final_loss"] + 1.0


def test_chat_schema_errors_name_file_line_and_field(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "usr", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ])
    with pytest.raises(UserError, match=r"bad.jsonl:2: field 'messages\[0\].role'"):
        load_conversations(bad)
    nolast = write_jsonl(tmp_path / "n.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(UserError, match=r"n.jsonl:1: field 'messages\[0\].role'.*last message"):
        load_conversations(nolast)
    pref = write_jsonl(tmp_path / "p.jsonl", [{"prompt": [{"role": "user", "content": "q"}], "chosen": []}])
    with pytest.raises(UserError, match=r"p.jsonl:1: field 'chosen'"):
        load_preferences(pref)


def test_alpaca_and_sharegpt_converters(tmp_path):
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "翻譯成英文", "input": "你好", "output": "Hello"},
                                  {"instruction": "Say hi", "output": "Hi"}], ensure_ascii=False))
    assert convert(alpaca, "alpaca", tmp_path / "a.jsonl") == 2
    convs = load_conversations(tmp_path / "a.jsonl")
    assert convs[0] == [{"role": "user", "content": "翻譯成英文\n\n你好"}, {"role": "assistant", "content": "Hello"}]
    share = write_jsonl(tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}])
    convert(share, "sharegpt", tmp_path / "s_out.jsonl")
    assert load_conversations(tmp_path / "s_out.jsonl")[0][1] == {"role": "assistant", "content": "yo"}
    broken = write_jsonl(tmp_path / "b.jsonl", [{"conversations": [{"from": "robot", "value": "x"}]}])
    with pytest.raises(UserError, match=r"b.jsonl:1: field 'conversations\[0\].from'"):
        convert(broken, "sharegpt", tmp_path / "b_out.jsonl")
    assert not (tmp_path / "b_out.jsonl").exists()


def test_sft_without_a_chat_template_is_a_clear_error(tmp_path, base_run, chat_file):
    import shutil

    from transformers import AutoTokenizer

    from hkllm.train import sft

    folder = tmp_path / "no-template"
    shutil.copytree(base_run[0], folder, ignore=shutil.ignore_patterns("checkpoints"))
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = None
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tok.save_pretrained(folder)
    recipe = load(make_recipe(tmp_path, "sft", out=str(tmp_path / "s"), model={"path": str(folder)},
                              data={"train": [str(chat_file)]}, train=TINY_TRAIN))
    with pytest.raises(UserError, match="no chat template"):
        sft.run(recipe, "test")
