"""The live-server fixtures of tests/serve (a tiny random chat model behind `hkllm serve`), and a
tiny random model whose answers are high-entropy text that tokenizes back to itself (watermark)."""

import json
from pathlib import Path

import pytest

from tests.serve.conftest import engine, model_dir, serve  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def build_text_model(out: Path) -> Path:
    """A random 2-layer Llama (2k BPE on the evaluation prompts) that never ends its turn and never
    emits a token that is not whole text (byte fragments, control characters, special tokens):
    its answers decode and re-tokenize mostly as generated, and its near-uniform logits make them
    carry the watermark as well as any answer can. Every token embedding has 1.0 in dimension 0,
    which no layer writes to, so after the final norm that dimension is positive, and the banned tokens' output
    rows give it a large negative weight."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from hkllm.train.tokenizer import train_tokenizer

    texts = [json.loads(line)["prompt"] for line in (REPO / "data/eval/chat_prompts.jsonl").read_text().splitlines()]
    texts += [json.loads(line)["question"] for line in (REPO / "data/eval/hk_knowledge.jsonl").read_text().splitlines()]
    tok = train_tokenizer(texts * 3, vocab_size=2000)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.2, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    special = set(tok.all_special_ids)
    banned = [i for i in range(len(tok)) if i in special or not (t := tok.decode([i])).strip()
              or "\ufffd" in t or any(ord(c) < 32 for c in t) or tok(t, add_special_tokens=False)["input_ids"] != [i]]
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:         # no layer writes dimension 0: it stays 1.0 to the final norm
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        model.lm_head.weight[banned, 0] = -50.0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory):
    return build_text_model(tmp_path_factory.mktemp("eval") / "tiny-text")
