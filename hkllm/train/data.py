"""Text for training and evaluation: read sources, mix in replay, pack into token blocks.

A source is `{path: ..., variety: ..., split: train|heldout|all, max_chars: N, tasks: [...]}` where path is
- a `hkllm data build` output folder (split picks its train/ or heldout/ shards; documents keep
  their `variety`, and those flagged `replay` join the replay pool),
- a JSONL file or a folder of JSONL files (field `text`; `variety` from the record, its
  `metadata`, or the source), split into train/held-out by a hash of the text (10% held out),
- `pydoc:`, the English prose that ships with Python (its help topics),
- `stdlib:`, the docstrings of Python's standard library, read from its source files (nothing is
  imported): about 1.1M more characters of English for a base model, never used in evaluation.
A JSONL record may hold a chat (`messages`, OpenAI style) instead of `text`: continued
pre-training renders it with the model's chat template (`render_chats`), so instruction data
can be mixed into pre-training in the very format the model will be asked in. `tasks` keeps only
the records whose `task` (as `hkllm data instructions` writes it) matches one of the patterns
(`fnmatch`: `refuse:*`), so that a recipe can take, say, the general and safety chats of a set
without its Hong Kong facts.
"""

from __future__ import annotations

import fnmatch
import functools
import json
from pathlib import Path

from hkllm.errors import UserError
from hkllm.files import read_jsonl, stable_hash

HELDOUT_PERCENT = 10
BUILTIN = ("pydoc:", "stdlib:")          # sources that ship with Python: no path on disk to name
# stdlib folders that are tests, demos or GUI code rather than documented library modules
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "tkinter"}


def retarget(value, run_prefix: str, out: Path):
    """A recipe's paths made absolute for one run: `run_prefix/...` (the recipes' default output,
    e.g. runs/quickstart) → out/..., any other relative path → that shipped file under assets.ROOT;
    absolute paths and Python's built-in sources (pydoc:, stdlib:) unchanged. Walks lists and the
    `path` of {path: ...} specs, so a recipe's data or eval list passes whole."""
    from hkllm import assets

    if isinstance(value, list):
        return [retarget(v, run_prefix, out) for v in value]
    if isinstance(value, dict):
        return {k: (retarget(v, run_prefix, out) if k == "path" else v) for k, v in value.items()}
    if not isinstance(value, str) or value in BUILTIN or Path(value).is_absolute():
        return value
    prefix = Path(run_prefix).parts
    if Path(value).parts[:len(prefix)] == prefix:
        return str(out.joinpath(*Path(value).parts[len(prefix):]))
    return str(assets.ROOT / value)


def _is_data_build(path: str) -> bool:
    return path not in BUILTIN and (Path(path) / "datacard.json").exists()


@functools.cache
def stdlib_docstrings(min_chars: int = 200) -> tuple[str, ...]:
    """Module, class and function docstrings of the standard library (at least min_chars long), in
    file order; parsed once per process (~10 s), since a run reads its train and held-out sides apart."""
    import ast
    import sysconfig

    lib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for f in sorted(lib.rglob("*.py")):
        if _STDLIB_SKIP & set(f.relative_to(lib).parts):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    out.append(doc)
    return tuple(out)


def _records(path: str, split: str) -> list[dict]:
    if path == "pydoc:":
        from pydoc_data.topics import topics

        return [{"text": t, "variety": "en"} for _, t in sorted(topics.items())]
    if path == "stdlib:":
        return [{"text": t, "variety": "en"} for t in stdlib_docstrings()]
    p = Path(path)
    if _is_data_build(path):
        files = sorted((p / ("heldout" if split == "heldout" else "train")).glob("*.jsonl"))
    elif p.is_dir():
        files = sorted(p.rglob("*.jsonl"))
    elif p.exists():
        files = [p]
    else:
        raise UserError(f"data source not found: {path}")
    records = []
    for f in files:
        for lineno, rec in read_jsonl(f):
            if not isinstance(rec, dict) or ("text" not in rec and "messages" not in rec):
                raise UserError(f"{f}:{lineno}: expected a JSON object with a 'text' (or 'messages') field")
            text = rec["text"] if "messages" not in rec else None
            meta = rec.get("metadata") or {}
            record = {"text": text, "variety": rec.get("variety") or meta.get("variety") or rec.get("lang"),
                      "replay": bool(meta.get("replay")), "task": rec.get("task")}
            if text is None:
                from hkllm.data.chat import validate_messages

                record["messages"] = validate_messages(rec["messages"], f"{f}:{lineno}")
            records.append(record)
    return records


def read_source(spec: dict | str, default_split: str) -> list[dict]:
    spec = {"path": spec} if isinstance(spec, str) else dict(spec)
    if "path" not in spec:
        raise UserError(f"data source {spec} has no 'path'")
    split = spec.get("split", default_split)
    if split not in ("train", "heldout", "all"):
        raise UserError(f"data source {spec['path']}: split must be train, heldout or all")
    records = _records(str(spec["path"]), split)
    if "tasks" in spec:
        patterns = spec["tasks"]
        if not isinstance(patterns, list) or not patterns or not all(isinstance(t, str) for t in patterns):
            raise UserError(f"data source {spec['path']}: tasks must be a non-empty list of task names or patterns")
        records = [r for r in records if r.get("task") and any(fnmatch.fnmatchcase(r["task"], t) for t in patterns)]
        if not records:
            raise UserError(f"data source {spec['path']}: no record has a task matching {patterns}")
    # A data build has its own held-out split; other sources are split here by a hash of the text.
    if not _is_data_build(str(spec["path"])) and split != "all":
        want_heldout = split == "heldout"
        records = [r for r in records if (stable_hash("heldout:" + _key(r)) % 100 < HELDOUT_PERCENT) == want_heldout]
    if spec.get("max_chars"):
        # A cap on a big source, drawn in a fixed pseudo-random order: the rest of the mix keeps its weight.
        kept, total = [], 0
        for r in sorted(records, key=lambda r: stable_hash("cap:" + _key(r))):
            if total >= spec["max_chars"]:
                break
            kept.append(r)
            total += len(_key(r))
        records = kept
    for r in records:
        r["variety"] = spec.get("variety") or r["variety"] or "unknown"
    return records


def _key(record: dict) -> str:
    return record["text"] if record["text"] is not None else json.dumps(record["messages"], ensure_ascii=False)


def render_chats(records: list[dict], tokenizer) -> list[dict]:
    """Chat records get their text: the conversation rendered by the model's chat template."""
    chats = [r for r in records if r["text"] is None]
    if chats and not getattr(tokenizer, "chat_template", None):
        raise UserError("chat records (messages) in data.train need a tokenizer with a chat template")
    for r in chats:
        r["text"] = tokenizer.apply_chat_template(r["messages"], tokenize=False)
    return records


def read_sources(specs: list, default_split: str) -> list[dict]:
    return [r for spec in specs for r in read_source(spec, default_split)]


def by_variety(records: list[dict], max_chars: int = 0) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    used: dict[str, int] = {}
    for r in records:
        v = r["variety"]
        if max_chars and used.get(v, 0) >= max_chars:
            continue
        text = r["text"][: max_chars - used.get(v, 0)] if max_chars else r["text"]
        out.setdefault(v, []).append(text)
        used[v] = used.get(v, 0) + len(text)
    return out


def with_replay(local: list[dict], replay: list[dict], share: float, seed: int = 0) -> list[dict]:
    """Local documents plus replay documents making up `share` of the characters.

    Replay documents are drawn in a fixed pseudo-random order, cycling if the pool is small.
    """
    local = [r for r in local if not r.get("replay")]
    if share <= 0:
        return local
    if not replay:
        raise UserError("data.replay_share > 0 but data.replay has no documents")
    need = share / (1 - share) * sum(len(r["text"]) for r in local)
    order = sorted(replay, key=lambda r: stable_hash(f"replay:{seed}:{r['text']}"))
    picked, got, i = [], 0, 0
    while got < need:
        r = order[i % len(order)]
        picked.append(r)
        got += len(r["text"])
        i += 1
    return local + picked


def separator(tokenizer) -> int:
    """The token that ends each packed document: <|endoftext|>, else the end-of-sequence token."""
    sep = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return tokenizer.eos_token_id if sep is None or sep == tokenizer.unk_token_id else sep


def document_positions(block, sep: int):
    """Position ids that restart after every separator. Given to a transformers model with no
    attention mask, they make its attention block-diagonal (masking_utils' packed sequences): a
    packed chat then sees its own question only, not the chats packed before it, as at inference."""
    import torch

    idx = torch.arange(len(block))
    starts = torch.zeros(len(block), dtype=torch.long)
    starts[1:] = torch.where(block[:-1] == sep, idx[1:], 0)
    return idx - torch.cummax(starts, dim=0).values


def pack(texts: list[str], tokenizer, seq_len: int, seed: int = 0):
    """Documents (each followed by the end-of-text token) in blocks of seq_len tokens, in a fixed
    shuffled order. A document that fits in a block is never cut: it goes whole into the current
    block, and when it no longer fits, the rest of that block is filled with the next piece of the
    longer documents (which are cut, as any packing cuts them). Cutting short documents at block
    boundaries is what plain concatenation does, and a cut chat teaches an answer without its
    question: at seq_len 128 the quickstart's chats (83 tokens on average) lost their start in ~65%
    of the windows, and the model learned to answer regardless of the question's variety (dev/LOG.md;
    "fewer truncations", Ding et al. 2024). Returns a LongTensor [blocks, seq_len]."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: stable_hash(f"pack:{seed}:{i}"))
    sep = separator(tokenizer)
    encoded = [doc + [sep] for doc in tokenizer([texts[i] for i in order], add_special_tokens=False)["input_ids"]]
    filler = [t for doc in encoded if len(doc) > seq_len for t in doc]      # the long documents, one stream
    blocks: list[list[int]] = []
    current: list[int] = []
    used = 0                                                                 # filler tokens placed so far
    for doc in (d for d in encoded if len(d) <= seq_len):
        if len(current) + len(doc) > seq_len:
            gap = seq_len - len(current)
            if used + gap <= len(filler):                    # out of filler: the short documents run on, cut
                current += filler[used:used + gap]
                used += gap
                blocks.append(current)
                current = []
        current += doc
        while len(current) >= seq_len:
            blocks.append(current[:seq_len])
            current = current[seq_len:]
    rest = current + filler[used:]
    blocks += [rest[i:i + seq_len] for i in range(0, len(rest) - seq_len + 1, seq_len)]
    if not blocks:
        raise UserError(f"not enough training text for one block of {seq_len} tokens")
    return torch.tensor(blocks, dtype=torch.long)
