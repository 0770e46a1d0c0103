"""Bits-per-byte: total negative log-likelihood (nats) / (ln 2 × UTF-8 bytes).

Unlike per-token perplexity it compares models with different tokenizers, which is what a
tokenizer extension or a base-model swap needs.
"""

from __future__ import annotations

import math


def bits_per_byte(model, tokenizer, texts: list[str], max_len: int = 512) -> float:
    import torch

    model.eval()
    nll, nbytes = 0.0, 0
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            nbytes += len(text.encode("utf-8"))
            # Score in windows of max_len tokens, each opened by BOS so its first token is predicted.
            for start in range(0, len(ids), max_len - 1):
                window = [bos] + ids[start : start + max_len - 1]
                x = torch.tensor([window])
                logits = model(input_ids=x).logits.float()
                logp = torch.log_softmax(logits[0, :-1], dim=-1)
                nll -= logp.gather(1, x[0, 1:].unsqueeze(1)).sum().item()
    return nll / (math.log(2) * nbytes) if nbytes else float("nan")


def bpb_by_variety(model, tokenizer, texts_by_variety: dict[str, list[str]], max_len: int = 512) -> dict[str, float]:
    return {v: round(bits_per_byte(model, tokenizer, texts, max_len), 4) for v, texts in sorted(texts_by_variety.items())}
