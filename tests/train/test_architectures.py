"""Real architectures, tiny and random: cpt and sft run on Llama, Qwen2 and DeepSeek-V3 (MoE + MLA)
folders exactly as they would on downloaded checkpoints."""

import pytest

from hkllm.train.recipe import load

from .conftest import TINY_TRAIN, make_recipe


def tiny_config(arch: str, vocab: int, tok):
    from transformers import DeepseekV3Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    if arch == "llama":
        return LlamaConfig(**common, num_key_value_heads=2)
    if arch == "qwen2":
        return Qwen2Config(**common, num_key_value_heads=1)
    return DeepseekV3Config(**common, num_key_value_heads=2, moe_intermediate_size=16, first_k_dense_replace=1,
                            n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1,
                            q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "deepseek_v3"])
def test_cpt_and_sft_on_a_tiny_random_model(arch, tmp_path, base_run, texts, chat_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hkllm.train import pretrain, sft

    tok = AutoTokenizer.from_pretrained(base_run[0])
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tok), tok))
    folder = tmp_path / arch
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert model.config.model_type == arch

    cpt = pretrain.run(load(make_recipe(tmp_path, "cpt", out=str(tmp_path / f"{arch}-cpt"), model={"path": str(folder)},
                                        data={"train": [str(texts["hk"])], "replay": [str(texts["general"])],
                                              "replay_share": 0.25},
                                        eval=[{"path": str(texts["hk"]), "split": "all"}],
                                        train={**TINY_TRAIN, "max_steps": 3})), "test")
    assert cpt["steps"] == 3
    out = sft.run(load(make_recipe(tmp_path, "sft", out=str(tmp_path / f"{arch}-sft"), model={"path": str(tmp_path / f"{arch}-cpt")},
                                   data={"train": [str(chat_file)]}, train={**TINY_TRAIN, "max_steps": 3, "seq_len": 64})), "test")
    assert out["steps"] == 3
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / f"{arch}-sft")
    assert reloaded.config.model_type == arch
