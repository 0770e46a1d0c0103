"""A tiny random chat model, its embedded engine, and live `hkllm serve` apps on loopback."""

import pytest

from hkllm.serve.testing import LiveServer

TEXTS = ["我哋今日去咗旺角食嘢，仲行咗好耐街。", "佢話聽日唔使返工，可以喺屋企休息。", "市民可於辦事處辦理登記手續。",
         "The library opens at ten in the morning.", "Please keep your ticket until the end of the journey."] * 20


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A random 2-layer Llama with hkllm's ChatML tokenizer; it never emits end-of-turn, so
    generations run to max_tokens (tests control their length)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from hkllm.train.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("serve") / "tiny-chat"
    tok = train_tokenizer(TEXTS, vocab_size=400)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[tok.eos_token_id] = 0.0   # tied: logit 0, below the best of the rest
    model.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id, do_sample=True,
                     temperature=0.7, top_p=0.9).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def engine(model_dir):
    from hkllm.serve.engine import LocalEngine

    return LocalEngine(model_dir, max_batch=8)


@pytest.fixture
def serve(engine, tmp_path):
    """serve(**settings) → a LiveServer with those Settings (state in tmp_path; no auth, no watermark
    unless asked: Settings' own defaults are both on)."""
    from hkllm.serve.app import Settings, build_app

    servers = []

    def start(engine_=None, **settings):
        settings.setdefault("state_dir", tmp_path / f"state{len(servers)}")
        settings.setdefault("auth", False)
        # Most tests here read the random model's own greedy output; test_watermark.py turns it on.
        settings.setdefault("watermark", False)
        server = LiveServer(build_app(engine_ or engine, Settings(**settings)))
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()
