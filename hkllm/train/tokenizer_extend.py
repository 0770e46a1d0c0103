"""`hkllm tokenizer extend --base PATH --corpus DIR --out PATH`: teach a base vocabulary Hong Kong.

Base vocabularies (trained mostly on English and Mandarin) split Cantonese characters such as
嘅 咗 喺 㗎 and everyday HK words into several byte tokens, which wastes context and slows
learning. This finds the characters and short words of the corpus that the base tokenizer
splits into more than one token, adds the most frequent ones (weighted by the tokens they
save), resizes the embeddings and initialises each new row as the mean of the embeddings of
the pieces the base tokenizer used for it. It reports bytes per token on held-out HK text
before and after.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from hkllm.errors import UserError

_HAN_RUN = re.compile(r"[\u3400-\u9fff\U00020000-\U0003134f]+")


def candidates(texts: list[str], tokenizer, max_new: int, max_word_len: int = 3, min_count: int = 5) -> list[str]:
    counts: Counter = Counter()
    for text in texts:
        for run in _HAN_RUN.findall(text):
            for n in range(1, max_word_len + 1):
                for i in range(len(run) - n + 1):
                    counts[run[i : i + n]] += 1
    vocab = tokenizer.get_vocab()
    scored = []
    for piece, count in counts.items():
        if count < min_count or piece in vocab:
            continue
        pieces = len(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if pieces > 1:
            scored.append((count * (pieces - 1), piece))
    scored.sort(reverse=True)
    return [piece for _, piece in scored[:max_new]]


def bytes_per_token(texts: list[str], tokenizer) -> float:
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    ntokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return nbytes / max(ntokens, 1)


def extend(base: str, corpus: str, out: str, max_new: int = 2000) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hkllm.train.data import read_source

    train = [r["text"] for r in read_source({"path": corpus}, "train")]
    heldout = [r["text"] for r in read_source({"path": corpus}, "heldout")] or train[-50:]
    if not train:
        raise UserError(f"no text found in --corpus {corpus}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype="float32")
    except (OSError, ValueError) as e:
        raise UserError(f"--base {base!r} is not a loadable Hugging Face causal LM: {e}") from None
    before = bytes_per_token(heldout, tokenizer)
    new = candidates(train, tokenizer, max_new)
    pieces = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in new}
    added = tokenizer.add_tokens(new)
    old_size = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight if not model.config.tie_word_embeddings else None
        for token, ids in pieces.items():
            row = tokenizer.convert_tokens_to_ids(token)
            if row >= old_size:
                emb[row] = emb[ids].mean(0)
                if head is not None:
                    head[row] = head[ids].mean(0)
    after = bytes_per_token(heldout, tokenizer)
    Path(out).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report = {"base": base, "added_tokens": added, "vocab_size": len(tokenizer), "bytes_per_token_before": round(before, 3),
              "bytes_per_token_after": round(after, 3), "examples": new[:20]}
    (Path(out) / "tokenizer_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    return report


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="tokenizer tools: extend a base vocabulary with Hong Kong characters and words",
                              description="Tokenizer tools.")
    sub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="{extend}")
    e = sub.add_parser("extend", help="add frequent HK characters/words that the base splits badly",
                       description=__doc__.split("\n\n", 1)[1], epilog="example: hkllm tokenizer extend --base "
                       "runs/tiny/base --corpus runs/quickstart/data --out runs/tiny/base-hk")
    e.add_argument("--base", required=True, help="Hugging Face model folder or id")
    e.add_argument("--corpus", required=True, help="a `hkllm data build` folder or JSONL file/folder")
    e.add_argument("--out", required=True, help="folder for the extended model and tokenizer")
    e.add_argument("--max-new", type=int, default=2000, help="most tokens to add (default 2000)")
    e.set_defaults(func=lambda a: print(json.dumps(extend(a.base, a.corpus, a.out, a.max_new), ensure_ascii=False, indent=1)) or 0)
