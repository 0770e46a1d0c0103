"""Watermark benchmark: detection power, false positives on human Hong Kong text, robustness,
quality cost and overhead of hkllm/safety/watermark.py.

    .venv/bin/python benchmarks/watermark.py                     # ~5 min on 1 core
    .venv/bin/python benchmarks/watermark.py --prompts 64 --keys 10 --out runs/bench/watermark.json

Model: `--model DIR`, else runs/quickstart/dpo when it exists, else a tiny random Llama (its
near-uniform logits make detection easy; say which in the report). One thread (`--threads`).

- **Power**: answers to chat prompts (data/eval/chat_prompts.jsonl, then hk_knowledge questions)
  decoded to 200 tokens with end-of-turn banned; prefixes of 25/50/100/200 tokens are decoded to
  text and detected with `detect` (tries and windows as served). Detection rate = share with
  p ≤ 0.01 and p ≤ 0.001 (nominal false-positive rates; too short counts as missed). Settings:
  greedy (green list, the default in consistency mode), T=0.7 and T=1.0 (Gumbel, as `auto`
  does), and T=0.7 with the green list for comparison; each also unmarked (the model's own false
  positives).
- **Coverage** (headline): the model's natural answers (end-of-turn allowed, ≤ 256 tokens) that
  are detected at p ≤ 0.01 — short, low-entropy answers cap it.
- **False positives**: every human text in data/ (demo documents by paragraph, chat data and
  seeds by message/string, evaluation prompts and answers, the variety dev set, table rows; PDFs
  are left out), for `--keys` keys: share detected at p ≤ 0.01 / 0.001 among those long enough
  to judge; also data/general (Simplified, not Hong Kong) and 1,000-token human documents
  (windows scanned).
- **Robustness** (200-token answers): OpenCC hk2s (detected as given only, and with the
  conversion back that `detect` tries), the hk2s→s2hk round trip, 10/25/50% of tokens replaced
  by random ones, and a 100-token marked span inside 1,000 tokens of human text (AUC of the window
  score against human-only documents, and of the whole-document score).
- **Quality**: bits-per-byte of the answers under the model's own (unmarked, T=1) distribution,
  marked against unmarked at the same temperature; repeated 4-grams.
- **Overhead**: processor time per token per row against a plain decode step per row (batch 1
  and the benchmark's batch); re-tokenization agreement (detection re-tokenizes the text).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import glob
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hkllm.safety.watermark import (  # noqa: E402
    WatermarkConfig,
    WatermarkKey,
    detect,
    detect_prepared,
    prepare,
    variant_text,
    watermark_processor,
)

LENGTHS = (25, 50, 100, 200)
CONFIG = WatermarkConfig()
KEY = WatermarkKey(0x5EED_2026_0001)
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# -- model --------------------------------------------------------------------------------------

def human_paragraphs(path: str | Path) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", text, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    return [re.sub(r"\s+", " ", line).strip() for line in text.splitlines() if line.strip()]


def load_model(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = args.model or (ROOT / "runs/quickstart/dpo" if (ROOT / "runs/quickstart/dpo").exists() and not args.tiny
                          else None)
    if path:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return model, tok, f"{Path(path).relative_to(ROOT) if Path(path).is_relative_to(ROOT) else path}"
    from transformers import LlamaConfig, LlamaForCausalLM

    from hkllm.train.tokenizer import train_tokenizer

    texts = [p for f in sorted(glob.glob(str(ROOT / "data/demo/docs/*"))) for p in human_paragraphs(f)]
    texts += [m["content"] for line in open(ROOT / "data/chat/hk_instructions.jsonl", encoding="utf-8")
              for m in json.loads(line)["messages"]]
    tok = train_tokenizer(texts, vocab_size=2000)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=0.2,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    return model, tok, "tiny random Llama (2 layers, 64 wide, 2k BPE)"


def special_ids(tok) -> tuple[list[int], list[int]]:
    """(end-of-turn ids, all special ids)."""
    eos = {tok.eos_token_id} | {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")
                                if t in tok.get_vocab()}
    special = set(tok.all_special_ids) | eos | {tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|pad|>")
                                                 if t in tok.get_vocab()}
    return sorted(i for i in eos if i is not None), sorted(i for i in special if i is not None)


def prompts(n: int) -> list[str]:
    out = [json.loads(line)["prompt"] for line in open(ROOT / "data/eval/chat_prompts.jsonl", encoding="utf-8")
           if not json.loads(line).get("should_refuse")]
    for line in open(ROOT / "data/eval/hk_knowledge.jsonl", encoding="utf-8"):
        rec = json.loads(line)
        q = rec.get("question") or rec.get("prompt")
        if isinstance(q, str):
            out.append(q)
    return out[:n]


def encode_prompt(tok, prompt: str) -> list[int]:
    if tok.chat_template:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        return list(ids)
    return tok(prompt)["input_ids"]


# -- generation -----------------------------------------------------------------------------------

class Timer:
    def __init__(self):
        self.seconds, self.calls = 0.0, 0


def generate(model, tok, prompt_ids: list[list[int]], temperature: float, scheme: str | None, max_new: int,
             ban_eos: bool, seed: int, batch: int, timer: Timer | None = None, key: WatermarkKey = KEY):
    """Batched decoding like the engine's: per-row processors on raw logits, then argmax or
    softmax(logits/T) sampling with a per-row generator. Returns per answer: ids, nll (nats,
    under the raw T=1 distribution), stopped (ended its turn)."""
    from transformers import DynamicCache

    eos, special = special_ids(tok)
    ban = torch.tensor(special if ban_eos else [i for i in special if i not in eos], dtype=torch.long)
    config = CONFIG if scheme in (None, "auto") else WatermarkConfig(scheme=scheme)
    results = []
    for start in range(0, len(prompt_ids), batch):
        rows = prompt_ids[start:start + batch]
        procs = [watermark_processor(config, key, temperature) if scheme else None for _ in rows]
        gens = [torch.Generator().manual_seed(seed * 1000 + start + r) for r in range(len(rows))]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, p in enumerate(rows):
            ids[r, width - len(p):], mask[r, width - len(p):] = torch.tensor(p), 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                           use_cache=True, logits_to_keep=1).logits[:, -1].float()
        out = [[] for _ in rows]
        nll = [0.0] * len(rows)
        done = [False] * len(rows)
        pos = positions[:, -1:]
        for _ in range(max_new):
            logp = torch.log_softmax(logits, -1)
            nxt = torch.zeros(len(rows), dtype=torch.long)
            for r in range(len(rows)):
                if done[r]:
                    continue
                row = logits[r].clone()
                row[ban] = -math.inf
                if procs[r] is not None:
                    t = time.perf_counter()
                    row = procs[r](rows[r] + out[r], row)
                    if timer is not None:
                        timer.seconds += time.perf_counter() - t
                        timer.calls += 1
                if temperature < 1e-5:
                    token = int(row.argmax())
                else:
                    token = int(torch.multinomial(torch.softmax(row / temperature, -1), 1, generator=gens[r]))
                nll[r] -= float(logp[r, token])
                if token in eos:
                    done[r] = True
                else:
                    out[r].append(token)
                nxt[r] = token
            if all(done):
                break
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            pos = pos + 1
            with torch.no_grad():
                logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, cache=cache,
                               use_cache=True).logits[:, -1].float()
        results += [{"ids": o, "nll": n, "stopped": d} for o, n, d in zip(out, nll, done)]
    return results


def decode_step_seconds(model, tok, prompt: list[int], batch: int, steps: int = 40) -> float:
    """Seconds of one plain decode step (forward of the next token with the cache) at this batch."""
    from transformers import DynamicCache

    ids = torch.tensor([prompt] * batch)
    cache = DynamicCache()
    with torch.no_grad():
        logits = model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1]
        nxt = logits.argmax(-1)
        t = time.perf_counter()
        for _ in range(steps):
            logits = model(input_ids=nxt[:, None], cache=cache, use_cache=True).logits[:, -1].float()
            nxt = logits.argmax(-1)
        return (time.perf_counter() - t) / steps


# -- human text ------------------------------------------------------------------------------------

def _leaves(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _leaves(v)
    elif isinstance(x, list):
        for v in x:
            yield from _leaves(v)


def human_hk_documents() -> dict[str, list[str]]:
    """Every human Hong Kong text in data/, by source (deduplicated strings; PDFs left out)."""
    import yaml

    src: dict[str, list[str]] = {}
    src["demo docs (paragraphs)"] = [p for f in sorted(glob.glob(str(ROOT / "data/demo/docs/*")))
                                     for p in human_paragraphs(f)]
    chat = []
    for f in sorted(glob.glob(str(ROOT / "data/chat/*.jsonl"))):
        for line in open(f, encoding="utf-8"):
            rec = json.loads(line)
            chat += [m["content"] for m in rec.get("messages", [])]
            chat += [v for k, v in rec.items() if k != "messages" and isinstance(v, str) and k not in ("kind", "id")]
            chat += [m["content"] for k, v in rec.items() if isinstance(v, list) for m in v
                     if isinstance(m, dict) and isinstance(m.get("content"), str) and k != "messages"]
    src["chat data (messages)"] = chat
    src["chat seeds (strings)"] = [s for f in sorted(glob.glob(str(ROOT / "data/chat/seeds/*.yaml")))
                                   for s in _leaves(yaml.safe_load(open(f, encoding="utf-8")))]
    ev = []
    for f in sorted(glob.glob(str(ROOT / "data/eval/*.jsonl"))):
        for line in open(f, encoding="utf-8"):
            ev += [s for s in _leaves(json.loads(line)) if len(s) > 3]
    ev += [line.split("\t", 1)[1] for line in open(ROOT / "data/eval/variety_dev.tsv", encoding="utf-8")
           if "\t" in line and not line.startswith("#")]
    src["eval sets (strings)"] = ev
    rows = []
    for f in sorted(glob.glob(str(ROOT / "data/demo/tables/*.csv"))):
        rows += [" ".join(r) for r in csv.reader(open(f, encoding="utf-8"))]
    for f in sorted(glob.glob(str(ROOT / "data/demo/tables/*.json"))):
        rows += [" ".join(_leaves(r)) for r in json.load(open(f, encoding="utf-8")) if isinstance(r, (dict, list))]
    src["tables (rows)"] = rows
    seen: set[str] = set()
    for name in src:
        keep = []
        for s in src[name]:
            s = s.strip()
            if s and s not in seen:
                seen.add(s)
                keep.append(s)
        src[name] = keep
    return src


def human_token_stream(tok, docs: dict[str, list[str]]) -> list[int]:
    """Hong Kong prose (demo documents and chat answers) as one token stream, for long human documents."""
    text = "\n".join(docs["demo docs (paragraphs)"] + [s for s in docs["chat data (messages)"] if len(s) > 40])
    return tok(text, add_special_tokens=False)["input_ids"]


# -- metrics -----------------------------------------------------------------------------------------

def auc(pos: list[float], neg: list[float]) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    pos_a, neg_a = np.asarray(pos), np.asarray(neg)
    greater = (pos_a[:, None] > neg_a[None, :]).sum() + 0.5 * (pos_a[:, None] == neg_a[None, :]).sum()
    return float(greater / (len(pos_a) * len(neg_a)))


def neglog(r: dict) -> float:
    return 0.0 if r["log10_p"] is None else -r["log10_p"]


def rate(results: list[dict], alpha: float) -> float:
    return sum(r["p_value"] is not None and r["p_value"] <= alpha for r in results) / max(1, len(results))


def repeated_4grams(ids: list[int]) -> float:
    grams = [tuple(ids[i:i + 4]) for i in range(len(ids) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def edit_tokens(ids: list[int], share: float, vocab: list[int], rng: random.Random) -> list[int]:
    out = list(ids)
    for i in rng.sample(range(len(out)), round(share * len(out))):
        out[i] = rng.choice(vocab)
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# -- main ------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a model folder (default runs/quickstart/dpo, else a tiny random model)")
    ap.add_argument("--tiny", action="store_true", help="use the tiny random model even if the quickstart's exists")
    ap.add_argument("--prompts", type=int, default=24, help="answers per setting (default 24)")
    ap.add_argument("--keys", type=int, default=5, help="keys for the false-positive rate (default 5)")
    ap.add_argument("--spans", type=int, default=24, help="1,000-token documents with and without a marked span")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="also write the numbers as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, model_name = load_model(args)
    log(f"model: {model_name}")
    ps = prompts(args.prompts)
    pids = [encode_prompt(tok, p) for p in ps]
    report: dict = {"model": model_name, "prompts": len(ps), "config": CONFIG.__dict__, "key_id": KEY.key_id}
    timers = {"green": Timer(), "gumbel": Timer()}

    # --- fixed-length answers (end of turn banned) ------------------------------------------------
    settings = [("greedy", 0.0, None), ("greedy + green", 0.0, "auto"), ("T=0.7", 0.7, None),
                ("T=0.7 + Gumbel", 0.7, "auto"), ("T=0.7 + green", 0.7, "green"), ("T=1.0", 1.0, None),
                ("T=1.0 + Gumbel", 1.0, "auto")]
    answers = {}
    for name, temp, scheme in settings:
        kind = CONFIG.scheme_for(temp) if scheme == "auto" else scheme
        answers[name] = generate(model, tok, pids, temp, scheme, max(LENGTHS), True, seed=1, batch=args.batch,
                                 timer=timers.get(kind))
        log(f"generated {name}")
    keys = [WatermarkKey(random.Random(k).getrandbits(64)) for k in range(args.keys)]
    power = {}
    for name, _, scheme in settings:
        row = {}
        for n in LENGTHS:
            prepared = [prepare(tok.decode(a["ids"][:n]), tok) for a in answers[name]]
            # marked: detected with the key that marked them; unmarked: false positives over all the keys
            res = [detect_prepared(p, k, CONFIG) for p in prepared for k in ([KEY] if scheme else keys)]
            row[n] = {"p<=0.01": rate(res, 0.01), "p<=0.001": rate(res, 0.001),
                      "judged": sum(r["verdict"] != "too_short" for r in res) / len(res)}
        power[name if scheme else f"{name} (unmarked: FPR over {len(keys)} keys)"] = row
    report["power"] = power
    log("power done")

    # --- natural answers: coverage ---------------------------------------------------------------------
    coverage = {}
    for name, temp in [("greedy + green", 0.0), ("T=0.7 + Gumbel", 0.7), ("T=1.0 + Gumbel", 1.0)]:
        nat = generate(model, tok, pids, temp, "auto", 256, False, seed=2, batch=args.batch)
        res = [detect(tok.decode(a["ids"]), tok, KEY, CONFIG) for a in nat]
        coverage[name] = {"detected p<=0.01": rate(res, 0.01), "detected p<=0.001": rate(res, 0.001),
                          "judged": sum(r["verdict"] != "too_short" for r in res) / len(res),
                          "mean tokens": float(np.mean([len(a["ids"]) for a in nat])),
                          "ended turn": sum(a["stopped"] for a in nat) / len(nat)}
    report["coverage"] = coverage
    log("coverage done")

    # --- false positives on human text -------------------------------------------------------------------
    docs = human_hk_documents()
    general = [json.loads(line)["text"] for line in open(ROOT / "data/general/zh_general.jsonl", encoding="utf-8")]
    fpr, hk_hits, hk_judged = {}, np.zeros(len(keys)), np.zeros(len(keys))
    for name, texts in [*docs.items(), ("data/general (Simplified, not HK)", general)]:
        prepared = [prepare(t, tok) for t in texts]
        hits01, hits001, judged = np.zeros(len(keys)), np.zeros(len(keys)), np.zeros(len(keys))
        for i, key in enumerate(keys):
            res = [r for r in (detect_prepared(p, key, CONFIG) for p in prepared) if r["verdict"] != "too_short"]
            judged[i] = len(res)
            hits01[i] = sum(r["p_value"] <= 0.01 for r in res)
            hits001[i] = sum(r["p_value"] <= 0.001 for r in res)
        if "general" not in name:
            hk_hits += hits01
            hk_judged += judged
        fpr[name] = {"documents": len(texts), "judged per key": float(judged.mean()),
                     "fpr@0.01": hits01.sum() / max(1, judged.sum()), "fpr@0.001": hits001.sum() / max(1, judged.sum()),
                     "max over keys @0.01": float(np.max(hits01 / np.maximum(1, judged)))}
    hk = [v for n, v in fpr.items() if "general" not in n]
    fpr["all Hong Kong text"] = {
        "documents": sum(len(v) for v in docs.values()), "judged per key": float(hk_judged.mean()),
        "fpr@0.01": hk_hits.sum() / hk_judged.sum(),
        "fpr@0.001": sum(v["fpr@0.001"] * v["judged per key"] for v in hk) / hk_judged.mean(),
        "max over keys @0.01": float(np.max(hk_hits / hk_judged))}
    stream = human_token_stream(tok, docs)
    long_rng = random.Random(5)
    starts = [long_rng.randrange(0, len(stream) - 1000) for _ in range(2 * args.spans)]
    long_docs = [prepare(tok.decode(stream[s:s + 1000]), tok) for s in starts]
    res = [detect_prepared(p, k, CONFIG) for p in long_docs for k in keys]
    fpr["1,000-token HK documents (windows scanned)"] = {
        "documents": len(long_docs), "judged per key": len(long_docs), "fpr@0.01": rate(res, 0.01),
        "fpr@0.001": rate(res, 0.001),
        "max over keys @0.01": max(rate(res[i::len(keys)], 0.01) for i in range(len(keys)))}
    report["false_positives"] = fpr
    log("false positives done")

    # --- robustness -------------------------------------------------------------------------------------
    _, special = special_ids(tok)
    vocab = [i for i in range(len(tok)) if i not in set(special)]
    rng = random.Random(7)
    robust = {}
    for name in ("greedy + green", "T=0.7 + Gumbel", "T=1.0 + Gumbel"):
        for n in (50, 200):
            texts = [tok.decode(a["ids"][:n]) for a in answers[name]]
            simp = [variant_text(t, "hk2s") for t in texts]
            changed = [sum(a != b for a, b in zip(t, s)) / max(1, len(re.findall(r"[\u4e00-\u9fff]", t)))
                       for t, s in zip(texts, simp)]
            row = {"clean": rate([detect(t, tok, KEY, CONFIG) for t in texts], 0.01),
                   "hk2s, as given": rate([detect(s, tok, KEY, CONFIG, variants=("raw",)) for s in simp], 0.01),
                   "hk2s, converted back": rate([detect(s, tok, KEY, CONFIG) for s in simp], 0.01),
                   "hk2s→s2hk": rate([detect(variant_text(s, "s2hk"), tok, KEY, CONFIG) for s in simp], 0.01),
                   "Han chars changed by hk2s": float(np.mean(changed))}
            for share in (0.10, 0.25, 0.50):
                edited = [tok.decode(edit_tokens(a["ids"][:n], share, vocab, rng)) for a in answers[name]]
                row[f"{int(share * 100)}% tokens edited"] = rate([detect(t, tok, KEY, CONFIG) for t in edited], 0.01)
            robust[f"{name}, N={n}"] = row
    report["robustness"] = robust
    log("robustness done")

    # --- a 10% marked span inside 1,000 tokens of human text ---------------------------------------------
    span_rng = random.Random(11)
    spans = {}
    for name in ("greedy + green", "T=1.0 + Gumbel"):
        pos_w, pos_doc, neg_w, neg_doc, found = [], [], [], [], 0
        for i in range(args.spans):
            a = answers[name][i % len(answers[name])]["ids"][:100]
            start = span_rng.randrange(0, len(stream) - 1000)
            human = stream[start:start + 900]
            cut = span_rng.randrange(100, 800)
            before, mark, after = tok.decode(human[:cut]), tok.decode(a), tok.decode(human[cut:])
            r = detect(before + mark + after, tok, KEY, CONFIG)
            pos_w.append(neglog(r["window"]) if r["window"] else 0.0)
            pos_doc.append(neglog(detect(before + mark + after, tok, KEY, CONFIG, windows=False)))
            w = r["window"]
            if w and w.get("start_char", 0) < len(before) + len(mark) and w.get("end_char", 0) > len(before):
                found += 1
            nstart = span_rng.randrange(0, len(stream) - 1000)
            neg = tok.decode(stream[nstart:nstart + 1000])
            rn = detect(neg, tok, KEY, CONFIG)
            neg_w.append(neglog(rn["window"]) if rn["window"] else 0.0)
            neg_doc.append(neglog(detect(neg, tok, KEY, CONFIG, windows=False)))
        spans[name] = {"windowed AUC": auc(pos_w, neg_w), "whole-document AUC": auc(pos_doc, neg_doc),
                       "window overlaps the span": found / args.spans,
                       "detected p<=0.01 (served p)": sum(10 ** -x <= 0.01 for x in pos_w) / args.spans,
                       "human 1k-token docs flagged p<=0.01": sum(10 ** -x <= 0.01 for x in neg_w) / args.spans}
    report["span"] = spans
    log("span done")

    # --- quality and overhead ------------------------------------------------------------------------------
    quality = {}
    for name, _, _ in settings:
        a = answers[name]
        nbytes = sum(len(tok.decode(x["ids"]).encode("utf-8")) for x in a)
        quality[name] = {"bits/byte": sum(x["nll"] for x in a) / math.log(2) / max(1, nbytes),
                         "repeated 4-grams": float(np.mean([repeated_4grams(x["ids"]) for x in a]))}
    report["quality"] = quality
    step1 = decode_step_seconds(model, tok, pids[0], 1)
    stepb = decode_step_seconds(model, tok, pids[0], args.batch)
    over = {}
    for kind, t in timers.items():
        per = t.seconds / max(1, t.calls)
        over[kind] = {"processor ms/token/row": per * 1e3, "decode step ms (batch 1)": step1 * 1e3,
                      "ratio vs batch-1 step": per / step1,
                      f"decode step ms/row (batch {args.batch})": stepb / args.batch * 1e3,
                      f"ratio vs batch-{args.batch} row": per / (stepb / args.batch)}
    report["overhead"] = over
    agree = []
    exact = 0
    for name in ("greedy + green", "T=0.7 + Gumbel", "T=1.0 + Gumbel"):
        for a in answers[name]:
            again = tok(tok.decode(a["ids"]), add_special_tokens=False)["input_ids"]
            exact += again == a["ids"]
            agree.append(difflib.SequenceMatcher(None, a["ids"], again, autojunk=False).ratio())
    report["retokenization"] = {"identical": exact / len(agree), "token agreement": float(np.mean(agree))}
    report["seconds"] = time.time() - T0
    report["cpu_seconds"] = time.process_time()
    print_report(report, args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    return 0


def print_report(r: dict, args) -> None:
    print(f"# Watermark benchmark — {r['model']}, {r['prompts']} prompts, key {r['key_id']}, "
          f"{r['seconds']:.0f} s ({r['cpu_seconds']:.0f} s CPU)\n")
    cov = r["coverage"]
    print("**Coverage** (natural answers detected at p ≤ 0.01): "
          + ", ".join(f"{k} {pct(v['detected p<=0.01'])} (mean {v['mean tokens']:.0f} tokens, "
                      f"{pct(v['judged'])} long enough to judge)" for k, v in cov.items()) + "\n")
    print("## Detection rate (answers of N tokens; p ≤ 0.01 / p ≤ 0.001)\n")
    print("| setting | " + " | ".join(f"N={n}" for n in LENGTHS) + " |")
    print("|---|" + "---|" * len(LENGTHS))
    for name, row in r["power"].items():
        print(f"| {name} | " + " | ".join(f"{pct(row[n]['p<=0.01'])} / {pct(row[n]['p<=0.001'])}" for n in LENGTHS)
              + " |")
    print("\n## False positives on human text (keys: %d)\n" % args.keys)
    print("| source | documents | judged/key | FPR @0.01 | FPR @0.001 | worst key @0.01 |")
    print("|---|---|---|---|---|---|")
    for name, v in r["false_positives"].items():
        print(f"| {name} | {v['documents']} | {v['judged per key']:.0f} | {100 * v['fpr@0.01']:.2f}% | "
              f"{100 * v['fpr@0.001']:.2f}% | {100 * v['max over keys @0.01']:.2f}% |")
    print("\n## Robustness (answers of N tokens, detected at p ≤ 0.01)\n")
    cols = list(next(iter(r["robustness"].values())))
    print("| setting | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, row in r["robustness"].items():
        print(f"| {name} | " + " | ".join(pct(row[c]) for c in cols) + " |")
    print(f"\n## A 100-token marked span inside 1,000 tokens of human text ({args.spans} each)\n")
    cols = list(next(iter(r["span"].values())))
    print("| setting | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, row in r["span"].items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if "AUC" in c else pct(row[c]) for c in cols) + " |")
    print("\n## Quality (bits/byte of the answers under the model's own T=1 distribution)\n")
    print("| setting | bits/byte | repeated 4-grams |")
    print("|---|---|---|")
    for name, v in r["quality"].items():
        print(f"| {name} | {v['bits/byte']:.3f} | {pct(v['repeated 4-grams'])} |")
    print("\n## Overhead (1 thread)\n")
    for kind, v in r["overhead"].items():
        print(f"- {kind}: " + ", ".join(f"{k} {x:.3f}" for k, x in v.items()))
    rt = r["retokenization"]
    print(f"- re-tokenization: {pct(rt['identical'])} of answers re-tokenize identically; token agreement "
          f"{pct(rt['token agreement'])}")


if __name__ == "__main__":
    sys.exit(main())
