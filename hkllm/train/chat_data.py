"""The assistant-token mask that SFT's loss uses under any chat template.

The chat data format itself (OpenAI `messages` JSONL, its validation, the alpaca and sharegpt
converters behind `hkllm data convert-chat`) is in hkllm/data/chat.py.
"""

from __future__ import annotations

from hkllm.data.chat import convert, load_conversations, load_preferences  # noqa: F401 (moved; tests import them here)
from hkllm.errors import UserError

# -- assistant-only loss under any chat template ----------------------------------------------
#
# hkllm's own template marks assistant turns with {% generation %} ... {% endgeneration %}, from
# which transformers computes the mask. Released models' templates (SmolLM2, Qwen2.5, Llama 3)
# have no markers, so the mask is found from rendered prefixes instead: the conversation up to
# an assistant turn, rendered with the generation prompt, is a prefix of the conversation that
# includes that turn; the characters in between are the turn's answer and its end-of-turn
# token (whatever the template puts after that token, a newline before the next turn, is left
# out). Tokens are mapped to characters by their offsets, so tokens merged across a boundary
# are still placed right.

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_text|>", "<|endoftext|>", "</s>")


def has_generation_markers(template) -> bool:
    return isinstance(template, str) and "{% generation %}" in template.replace("{%-", "{%").replace("-%}", "%}")


def end_of_turn_strings(tokenizer) -> list[str]:
    """End-of-turn / end-of-text tokens present in this tokenizer's vocabulary."""
    vocab = tokenizer.get_vocab()
    found = [t for t in END_OF_TURN if t in vocab]
    if tokenizer.eos_token and tokenizer.eos_token not in found:
        found.append(tokenizer.eos_token)
    return found


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], where: str = "conversation") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and, per assistant turn, the [start, end) characters of its
    answer through its end-of-turn token."""
    full = _render(tokenizer, messages)
    ends = end_of_turn_strings(tokenizer)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        upto = _render(tokenizer, messages[: i + 1])
        before = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        if not upto.startswith(before):
            # Templates whose generation prompt differs from how they render a past answer
            # (e.g. an empty <think> block): the span then starts after the previous turn.
            before = _render(tokenizer, messages[:i]) if i else ""
        if not (full.startswith(upto) and upto.startswith(before)):
            raise UserError(f"{where}: the chat template does not render conversations prefix by prefix (it rewrites "
                            f"earlier turns), so the assistant turns cannot be located for assistant-only loss; add "
                            "{% generation %} ... {% endgeneration %} markers around assistant answers to the template")
        start, end = len(before), len(upto)
        segment = full[start:end]
        content = m["content"].strip()
        at = segment.find(content) if content else -1
        search_from = at + len(content) if at >= 0 else 0
        hits = [(j, len(t)) for t in ends if (j := segment.find(t, search_from)) >= 0]
        if hits:
            j, n = min(hits)
            end = start + j + n
        spans.append((start, end))
    return full, spans


def assistant_mask(tokenizer, messages: list[dict], where: str = "conversation") -> dict:
    """{"input_ids", "assistant_masks"}: the tokenized conversation and 1 on every token of an
    assistant answer and its end-of-turn token, 0 elsewhere (system, user, role headers)."""
    full, spans = assistant_spans(tokenizer, messages, where)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(a < e and s < b for s, e in spans)) for a, b in enc["offset_mapping"]]
    return {"input_ids": list(enc["input_ids"]), "assistant_masks": mask}
