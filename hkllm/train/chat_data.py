"""Chat data: OpenAI `messages` JSONL, validated, converters from alpaca and sharegpt, and the
assistant-token mask that SFT's loss uses under any chat template.

    hkllm data convert-chat --format alpaca alpaca.json --out chat.jsonl

Every schema error names the file, the line and the field.
"""

from __future__ import annotations

import json
from pathlib import Path

from hkllm.errors import UserError

ROLES = ("system", "user", "assistant")


def _fail(where: str, field: str, why: str):
    raise UserError(f"{where}: field '{field}': {why}")


def validate_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        _fail(where, "messages", "must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            _fail(where, f"messages[{i}]", "must be an object with 'role' and 'content'")
        if m.get("role") not in ROLES:
            _fail(where, f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            _fail(where, f"messages[{i}].content", "must be a string")
    if messages[-1]["role"] != "assistant":
        _fail(where, f"messages[{len(messages) - 1}].role", "the last message must be the assistant's answer")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_jsonl(path: Path):
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def load_conversations(path: str | Path) -> list[list[dict]]:
    return [validate_messages(r.get("messages") if isinstance(r, dict) else None, where)
            for where, r in read_jsonl(Path(path))]


def load_preferences(path: str | Path) -> list[dict]:
    """DPO pairs: {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}."""
    pairs = []
    for where, r in read_jsonl(Path(path)):
        if not isinstance(r, dict):
            _fail(where, "(record)", "must be an object")
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(r.get(key), list) or not r[key]:
                _fail(where, key, "must be a non-empty list of messages")
        for key in ("chosen", "rejected"):
            if r[key][-1].get("role") != "assistant" or not isinstance(r[key][-1].get("content"), str):
                _fail(where, f"{key}[-1]", "must be an assistant message with string content")
        pairs.append({k: r[k] for k in ("prompt", "chosen", "rejected")})
    return pairs


def from_alpaca(record: dict, where: str) -> list[dict]:
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            _fail(where, key, "missing or not a string (alpaca records need instruction and output)")
    prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def from_sharegpt(record: dict, where: str) -> list[dict]:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        _fail(where, "conversations", "missing or not a list (sharegpt records hold a 'conversations' list)")
    messages = []
    for i, t in enumerate(turns):
        role = _SHAREGPT_ROLES.get(t.get("from") if isinstance(t, dict) else None)
        if role is None:
            _fail(where, f"conversations[{i}].from", f"must be one of {', '.join(_SHAREGPT_ROLES)}")
        if not isinstance(t.get("value"), str):
            _fail(where, f"conversations[{i}].value", "must be a string")
        messages.append({"role": role, "content": t["value"]})
    return validate_messages(messages, where)


def convert(path: str | Path, fmt: str, out: str | Path) -> int:
    path, out = Path(path), Path(out)
    text = path.read_text(encoding="utf-8").lstrip()
    if text.startswith("["):  # a JSON array (the usual alpaca release) rather than JSONL
        records = [(f"{path}:item{i}", r) for i, r in enumerate(json.loads(text), start=1)]
    else:
        records = list(read_jsonl(path))
    converter = {"alpaca": from_alpaca, "sharegpt": from_sharegpt}[fmt]
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for where, r in records:
            f.write(json.dumps({"messages": converter(r, where)}, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return len(records)


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
