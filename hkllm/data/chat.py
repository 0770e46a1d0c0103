"""Chat data: OpenAI `messages` JSONL, validated, and converters from alpaca and sharegpt.

    hkllm data convert-chat --format alpaca alpaca.json --out chat.jsonl

Every schema error names the file, the line and the field. SFT's assistant-token mask, which
needs a tokenizer, is in hkllm/train/chat_data.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from hkllm.errors import UserError
from hkllm.files import read_jsonl

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


def chat_records(path: Path):
    """(where, record) for each record of a chat JSONL file; where is `file:line`."""
    for lineno, record in read_jsonl(path):
        yield f"{path}:{lineno}", record


def load_conversations(path: str | Path) -> list[list[dict]]:
    return [validate_messages(r.get("messages") if isinstance(r, dict) else None, where)
            for where, r in chat_records(Path(path))]


def load_preferences(path: str | Path) -> list[dict]:
    """DPO pairs: {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}."""
    pairs = []
    for where, r in chat_records(Path(path)):
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
    text = path.read_text(encoding="utf-8-sig").lstrip()
    if text.startswith("["):  # a JSON array (the usual alpaca release) rather than JSONL
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        records = [(f"{path}:item{i}", r) for i, r in enumerate(items, start=1)]
    else:
        records = list(chat_records(path))
    converter = {"alpaca": from_alpaca, "sharegpt": from_sharegpt}[fmt]
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for where, r in records:
            f.write(json.dumps({"messages": converter(r, where)}, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return len(records)
