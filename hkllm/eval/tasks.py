"""The built-in evaluation tasks. Each is a function `task(model, cfg) -> (metrics, samples)`:

- metrics: {name: {"value", "ci_low", "ci_high", "n"}} — every number with its interval;
- samples: one dict per item (task, id, prompt, output, score, and what the gate pairs on).

`model` is a backend (backends.py): loglikelihoods, doc_nll and chat are all a task may use
(watermark also uses the in-process backend's `generate`; moderation uses no model at all).
`cfg` is the task's block of the suite YAML, paths already resolved. Read top to bottom:
lm → knowledge → fidelity → translation → consistency → safety → chat → watermark →
moderation → external.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hkllm import config, files
from hkllm.errors import UserError
from hkllm.eval import metrics as M
from hkllm.text.checks import is_refusal, simplified_leak

HK, GENERAL = ("yue", "zh-hant"), ("en", "zh-hans")


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """The records of an evaluation set, each an object holding the `required` fields."""
    rows = []
    for lineno, row in files.read_jsonl(path):
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise UserError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    return rows


def ratio_ci(nll: list[float], n_bytes: list[int], n_boot: int = 1000, seed: int = 0) -> dict:
    """Pooled bits-per-byte with a bootstrap interval over documents."""
    nll_a, bytes_a = np.asarray(nll), np.asarray(n_bytes, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(nll_a), (n_boot, len(nll_a)))
    boot = nll_a[idx].sum(1) / (math.log(2) * bytes_a[idx].sum(1))
    return {"value": M.bits_per_byte(float(nll_a.sum()), int(bytes_a.sum())), "ci_low": float(np.quantile(boot, 0.025)),
            "ci_high": float(np.quantile(boot, 0.975)), "n": len(nll_a)}


# -- language modelling ---------------------------------------------------------------------

def lm(model, cfg: dict):
    """Bits-per-byte per variety on held-out text; lm.bpb.hk and lm.bpb.general pool them."""
    from hkllm.train.data import read_sources

    docs = read_sources(cfg["sources"], "heldout")
    per_variety: dict[str, list[dict]] = defaultdict(list)
    for r in docs:
        if len(per_variety[r["variety"]]) < cfg.get("max_docs", 150):
            per_variety[r["variety"]].append(r)
    samples, metrics = [], {}
    for variety, rows in sorted(per_variety.items()):
        texts = [r["text"][: cfg.get("max_chars", 2000)] for r in rows]
        for text, (nll, n) in zip(texts, model.doc_nll(texts)):
            samples.append({"task": "lm.bpb", "id": f"{variety}-{files.stable_hash(text):016x}", "variety": variety,
                            "nll": nll, "bytes": n, "score": M.bits_per_byte(nll, n), "prompt": text[:80]})
    for name, varieties in [(v, (v,)) for v in per_variety] + [("hk", HK), ("general", GENERAL)]:
        rows = [s for s in samples if s["variety"] in varieties]
        if rows:
            metrics[f"lm.bpb.{name}"] = ratio_ci([s["nll"] for s in rows], [s["bytes"] for s in rows])
    return metrics, samples


# -- Hong Kong knowledge --------------------------------------------------------------------

MC_TEMPLATE = {"en": "Question: {q}\nAnswer:", "default": "問題：{q}\n答案："}
OPEN_TEMPLATE = {"en": "{q}\n{options}\nAnswer with the letter only.", "yue": "{q}\n{options}\n淨係答選項字母就得。",
                 "default": "{q}\n{options}\n請只回答選項字母。"}


def _template(table: dict, lang: str) -> str:
    return table.get(lang, table["default"])


def multiple_choice(model, items: list[dict], task: str) -> list[dict]:
    """Score each choice by log-likelihood after the question; the most likely one is the answer."""
    pairs, owners = [], []
    for i, it in enumerate(items):
        context = _template(MC_TEMPLATE, it.get("lang", "")).format(q=it["question"])
        for choice in it["choices"]:
            pairs.append((context, (" " if it.get("lang") == "en" else "") + choice))
            owners.append(i)
    scores = model.loglikelihoods(pairs)
    per_item: dict[int, list[float]] = defaultdict(list)
    for i, s in zip(owners, scores):
        per_item[i].append(s)
    samples = []
    for i, it in enumerate(items):
        pred = int(np.argmax(per_item[i]))
        samples.append({"task": task, "id": it["id"], "prompt": it["question"], "output": it["choices"][pred],
                        "pred": pred, "correct": pred == it["answer"], "score": float(pred == it["answer"]),
                        "lang": it.get("lang", ""), "group": it.get("group"), "must_hold": bool(it.get("must_hold")),
                        "loglikelihoods": per_item[i]})
    return samples


def by_lang(prefix: str, samples: list[dict], key: str = "correct") -> dict:
    out = {prefix: M.mean_ci([bool(s[key]) for s in samples])}
    for lang in sorted({s["lang"] for s in samples if s.get("lang")}):
        out[f"{prefix}.{lang}"] = M.mean_ci([bool(s[key]) for s in samples if s["lang"] == lang])
    return out


def knowledge(model, cfg: dict):
    """Multiple choice by log-likelihood, and the same questions open-ended through chat."""
    items = read_jsonl(cfg["path"], ("id", "question", "choices", "answer"))
    samples = multiple_choice(model, items, "knowledge.mc")
    metrics = by_lang("knowledge.mc.acc", samples)
    groups = defaultdict(list)
    for s in samples:
        if s["group"]:
            groups[s["group"]].append(s["pred"])
    if any(len(g) > 1 for g in groups.values()):
        pc = M.paraphrase_consistency(groups)
        metrics["consistency.paraphrase"] = {**M.proportion_ci(round(pc["value"] * pc["n_groups"]), pc["n_groups"]),
                                             "inconsistent": pc["inconsistent"]}
    if cfg.get("open_ended", True):
        prompts = []
        for it in items:
            options = "\n".join(f"{chr(65 + k)}. {c}" for k, c in enumerate(it["choices"]))
            prompts.append([{"role": "user", "content": _template(OPEN_TEMPLATE, it.get("lang", "")).format(
                q=it["question"], options=options)}])
        answers = model.chat(prompts, max_tokens=cfg.get("max_tokens", 32))
        open_samples = []
        for it, answer in zip(items, answers):
            pred = M.extract_choice(answer, len(it["choices"]), it["choices"])
            open_samples.append({"task": "knowledge.open", "id": it["id"], "prompt": prompts[-1][0]["content"],
                                 "output": answer, "pred": pred, "parsed": pred is not None,
                                 "correct": pred == it["answer"], "score": float(pred == it["answer"]),
                                 "lang": it.get("lang", "")})
        metrics.update(by_lang("knowledge.open.acc", open_samples))
        metrics["knowledge.open.parse_failure_rate"] = M.mean_ci([not s["parsed"] for s in open_samples])
        samples += open_samples
    return metrics, samples


# -- Cantonese fidelity ---------------------------------------------------------------------

def fidelity(model, cfg: dict):
    """Do Cantonese prompts get Cantonese answers, in Traditional characters?"""
    from hkllm.text.detect import detect

    items = [it for it in read_jsonl(cfg["path"], ("id", "question")) if it.get("lang", "yue") == "yue"]
    answers = model.chat([[{"role": "user", "content": it["question"]}] for it in items],
                         max_tokens=cfg.get("max_tokens", 64))
    samples = []
    for it, answer in zip(items, answers):
        variety = detect(answer).variety if answer.strip() else "empty"
        samples.append({"task": "fidelity", "id": it["id"], "prompt": it["question"], "output": answer,
                        "variety": variety, "cantonese": variety == "yue", "simplified_leak": simplified_leak(answer),
                        "score": float(variety == "yue")})
    return {"fidelity.cantonese_rate": M.mean_ci([s["cantonese"] for s in samples]),
            "fidelity.simplified_leak_rate": M.mean_ci([s["simplified_leak"] for s in samples])}, samples


# -- translation ----------------------------------------------------------------------------

LANG_NAMES = {"yue": "粵語（廣東話口語）", "zh-hant": "書面語（繁體中文）", "en": "英文", "zh-hans": "簡體中文"}


def translation(model, cfg: dict):
    """Cantonese ↔ Standard Written Chinese ↔ English, scored with chrF per direction."""
    items = read_jsonl(cfg["path"], ("id", "src_lang", "tgt_lang", "source", "reference"))
    prompts = [[{"role": "user", "content": f"請將以下{LANG_NAMES.get(it['src_lang'], it['src_lang'])}翻譯成"
                 f"{LANG_NAMES.get(it['tgt_lang'], it['tgt_lang'])}，只輸出譯文：\n{it['source']}"}] for it in items]
    outputs = [o.strip() for o in model.chat(prompts, max_tokens=cfg.get("max_tokens", 96))]
    samples = [{"task": "translation", "id": it["id"], "prompt": p[0]["content"], "output": o,
                "reference": it["reference"], "direction": f"{it['src_lang']}-{it['tgt_lang']}",
                "score": M.sentence_chrf(o, it["reference"])} for it, p, o in zip(items, prompts, outputs)]
    metrics = {"translation.chrf": M.mean_ci([s["score"] for s in samples])}
    for direction in sorted({s["direction"] for s in samples}):
        rows = [s for s in samples if s["direction"] == direction]
        metrics[f"translation.chrf.{direction}"] = {
            **M.mean_ci([s["score"] for s in rows]), "value": M.chrf([s["output"] for s in rows],
                                                                     [s["reference"] for s in rows])}
    return metrics, samples


# -- consistency ----------------------------------------------------------------------------

def consistency(model, cfg: dict):
    """Repeat consistency: k identical requests per probe; U@k = distinct answers (target 1)."""
    items = read_jsonl(cfg["path"], ("id", "question"))[: cfg.get("probes", 10)]
    k = cfg.get("k", 5)
    answers = model.chat([[{"role": "user", "content": it["question"]}] for it in items for _ in range(k)],
                         max_tokens=cfg.get("max_tokens", 48))
    samples = []
    for i, it in enumerate(items):
        outs = answers[i * k:(i + 1) * k]
        samples.append({"task": "consistency.repeat", "id": it["id"], "prompt": it["question"], "output": outs[0],
                        "distinct": M.distinct_outputs(outs), "modal_agreement": M.modal_agreement(outs),
                        "score": float(M.distinct_outputs(outs) == 1)})
    distinct = [s["distinct"] for s in samples]
    return {"consistency.repeat.max_distinct": {"value": float(max(distinct)), "ci_low": None, "ci_high": None,
                                                "n": len(samples), "k": k},
            "consistency.repeat.stable_share": M.mean_ci([d == 1 for d in distinct]),
            "consistency.repeat.modal_agreement": M.mean_ci([s["modal_agreement"] for s in samples])}, samples


def version_flips(samples: list[dict], previous: list[dict], task: str = "knowledge.mc") -> dict:
    """Flip, negative-flip and positive-flip rates against a previous release's samples."""
    old = {s["id"]: bool(s["correct"]) for s in previous if s.get("task") == task}
    new = {s["id"]: bool(s["correct"]) for s in samples if s.get("task") == task}
    if not old or not set(old) & set(new):
        return {}
    f = M.flips(old, new)
    n = f["n"]
    return {"consistency.version.flip_rate": M.proportion_ci(round(f["flip_rate"] * n), n),
            "consistency.version.negative_flip_rate": {**M.proportion_ci(len(f["negative_flips"]), n),
                                                       "ids": f["negative_flips"]},
            "consistency.version.positive_flip_rate": M.proportion_ci(len(f["positive_flips"]), n)}


# -- safety ---------------------------------------------------------------------------------

@dataclass
class SafetyPolicy:
    refuse: list[str] = field(default_factory=list)    # categories whose prompts must be refused
    answer: list[str] = field(default_factory=list)    # categories that must be answered (refusing = over-refusal)
    extra_refusal_patterns: list[str] = field(default_factory=list)   # regular expressions that also count as a refusal


def load_policy(path: str | Path) -> dict:
    """A safety policy (recipes/eval/safety_policy.yaml) as {"refuse", "answer", "extra_refusal_patterns"}."""
    policy = config.load(path, SafetyPolicy, what="policy field", missing="safety policy")
    for i, pattern in enumerate(policy.extra_refusal_patterns):
        try:
            re.compile(pattern)
        except re.error as e:
            raise config.ConfigError(path, f"extra_refusal_patterns[{i}]", f"not a regular expression ({e})") from None
    return dataclasses.asdict(policy)


def safety(model, cfg: dict):
    """Refusal rate on prompts the policy says must be refused; over-refusal on harmless ones."""
    items = read_jsonl(cfg["path"], ("id", "prompt", "should_refuse"))
    policy = load_policy(cfg["policy"]) if cfg.get("policy") else {}
    refuse, answer = set(policy.get("refuse", [])), set(policy.get("answer", []))
    extra = [re.compile(p, re.IGNORECASE) for p in policy.get("extra_refusal_patterns", [])]
    outputs = model.chat([[{"role": "user", "content": it["prompt"]}] for it in items],
                         max_tokens=cfg.get("max_tokens", 64))
    samples = []
    for it, out in zip(items, outputs):
        cat = it.get("category", "")
        should = True if cat in refuse else False if cat in answer else bool(it["should_refuse"])
        refused = is_refusal(out) or any(p.search(out) for p in extra)
        samples.append({"task": "safety", "id": it["id"], "prompt": it["prompt"], "output": out, "category": cat,
                        "lang": it.get("lang", ""), "should_refuse": should, "refused": refused,
                        "score": float(refused == should)})
    harmful = [s for s in samples if s["should_refuse"]]
    harmless = [s for s in samples if not s["should_refuse"]]
    metrics = {}
    if harmful:
        metrics.update(by_lang("safety.refusal_rate", harmful, "refused"))
        metrics["safety.harmful_compliance_rate"] = M.mean_ci([not s["refused"] for s in harmful])
    if harmless:
        metrics.update(by_lang("safety.over_refusal_rate", harmless, "refused"))
    return metrics, samples


# -- chat: does it answer at all? ----------------------------------------------------------

def chat(model, cfg: dict):
    """Every prompt of every source, answered within max_tokens (default 128): degenerate answers
    (empty, whitespace, one unit repeated), answers that end the turn by themselves, answers in
    the asker's variety (by `hkllm text detect`; translation and rewriting tasks excepted), and
    refusals where a source marks `should_refuse`. Metrics pool all sources (chat.*) and are
    also given per source (chat.<name>.*), e.g. unseen prompts apart from the suite's own."""
    from hkllm.text.detect import detect

    samples = []
    for source in cfg["sources"]:
        text_field = source.get("field", "prompt")
        items = [it for it in read_jsonl(source["path"], ("id", text_field)) if it.get("kind") != "task"]
        answers = model.chat_with_finish([[{"role": "user", "content": it[text_field]}] for it in items],
                                         max_tokens=cfg.get("max_tokens", 128))
        for it, (answer, finish) in zip(items, answers):
            lang = it.get("lang", "")
            variety = detect(answer).variety if answer.strip() else "empty"
            row = {"task": "chat", "id": it["id"], "source": source["name"], "prompt": it[text_field], "output": answer,
                   "lang": lang, "variety": variety, "degenerate": M.is_degenerate(answer), "looping": M.is_looping(answer),
                   "stopped": finish == "stop",
                   "language_match": variety == lang, "refused": is_refusal(answer)}
            if "should_refuse" in it:
                row["should_refuse"] = bool(it["should_refuse"])
            row["score"] = float(not row["degenerate"] and row["stopped"] and row["language_match"])
            samples.append(row)
    metrics = {}
    for prefix, rows in [("chat", samples)] + [(f"chat.{s['name']}", [r for r in samples if r["source"] == s["name"]])
                                               for s in cfg["sources"]]:
        if not rows:
            continue
        metrics[f"{prefix}.degenerate_rate"] = M.mean_ci([r["degenerate"] for r in rows])
        metrics[f"{prefix}.loop_rate"] = M.mean_ci([r["looping"] for r in rows])
        metrics[f"{prefix}.stop_rate"] = M.mean_ci([r["stopped"] for r in rows])
        for lang in sorted({r["lang"] for r in rows if r["lang"]}):
            metrics[f"{prefix}.language_match.{lang}"] = M.mean_ci([r["language_match"] for r in rows if r["lang"] == lang])
        refuse = [r for r in rows if r.get("should_refuse") is True]
        harmless = [r for r in rows if r.get("should_refuse") is False]
        if refuse:
            metrics.update(by_lang(f"{prefix}.refusal_rate", refuse, "refused"))
        if harmless:
            metrics[f"{prefix}.over_refusal_rate"] = M.mean_ci([r["refused"] for r in harmless])
    return metrics, samples


# -- watermark: are the model's answers detected, and human text not? ----------------------

WATERMARK_SETTINGS = (("green", 0.0), ("gumbel", 1.0))   # greedy gets the green list, T=1 Gumbel-max (scheme auto)
LENGTH_BUCKETS = ((0, 24), (25, 49), (50, 99), (100, None))   # answer length in tokens, as detection tokenizes it
LONG_ANSWER = 50                                      # watermark.detect_rate.tokens_50_plus: what the gate judges
OTHER_KEYS = 4                                        # keys the answers were not marked with: false positives on model text


def _bucket(lo: int, hi: int | None) -> str:
    return f"tokens_{lo}_plus" if hi is None else f"tokens_{lo}_{hi}"


def _interleave(groups: dict[str, list]) -> list:
    """One of each group in turn (sorted by name), so a cap keeps every group represented."""
    lists, out = [groups[k] for k in sorted(groups)], []
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def _human_chunks(cfg: dict, tokenizer) -> list[dict]:
    """Held-out human documents of the `sources` (as the lm task reads them), cut into pieces of
    about `chunk_tokens` tokens (default 200), at most `max_docs` (default 60) over all varieties."""
    from hkllm.train.data import read_sources

    size, cap = cfg.get("chunk_tokens", 200), cfg.get("max_docs", 60)
    per_variety: dict[str, list[dict]] = defaultdict(list)
    for r in read_sources(cfg["sources"], "heldout"):
        if len(per_variety[r["variety"]]) >= cap:
            continue
        ids = tokenizer(r["text"], add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), size):
            piece = ids[start:start + size]
            if len(piece) >= min(size, 32):
                text = tokenizer.decode(piece).replace("\ufffd", "").strip()   # a character cut at an edge
                per_variety[r["variety"]].append({"variety": r["variety"], "text": text})
    return _interleave(per_variety)[:cap]


def watermark(model, cfg: dict):
    """Detection of watermarked answers and false positives on human text (hkllm/safety/watermark.py).

    Chat prompts (`path`, default data/eval/chat_prompts.jsonl; `prompts` of them, default 24, the
    languages in turn, must-refuse and task prompts left out) are answered twice, within `max_tokens`
    (default 96): greedy, which the green list marks, and at temperature 1 (seeded), which Gumbel-max
    marks, as the embedded server does (WatermarkConfig defaults, scheme auto). The key is the eval's
    own, made from `key_seed` (default 1234), never a server's. Each answer is detected with
    `detect` at alpha 0.01 (p ≤ 0.01 is a 1% false-positive rate; too short to judge counts as
    missed): watermark.detect_rate overall, by scheme and by answer length in tokens
    (tokens_0_24 ... tokens_100_plus, and tokens_50_plus for the gate); watermark.coverage is the
    share long enough to judge at all. watermark.false_positive_rate is the share of human held-out
    text (`sources`, as the lm task's; see _human_chunks) detected as marked, per variety too, and
    .other_key the share of (answer, key) pairs detected under OTHER_KEYS keys the answers were not
    marked with (the model's own repetitive text must not look marked either; n = answers × keys). The answers are marked
    in this process as `hkllm serve` marks them (a fresh processor per request, last in the chain).
    A served model (--base-url) cannot be marked from the client: the task is skipped (no metrics)."""
    from hkllm.safety.watermark import WatermarkConfig, WatermarkKey, detect_prepared, prepare, watermark_processor
    from hkllm.serve.contract import SamplingParams

    if not hasattr(model, "generate"):
        return {}, []      # the gate's watermark rules then say "not measured"
    alpha = cfg.get("alpha", 0.01)
    seed = cfg.get("key_seed", 1234)
    if not 0 <= seed < 2**64:
        raise UserError(f"watermark: key_seed must be an integer in [0, 2**64), got {seed}")
    key = WatermarkKey(seed)
    others = [WatermarkKey(files.stable_hash(f"hkllm-eval-other-key:{seed}:{i}")) for i in range(OTHER_KEYS)]
    config = WatermarkConfig()
    rows = [it for it in read_jsonl(cfg.get("path", "data/eval/chat_prompts.jsonl"), ("id", "prompt"))
            if not it.get("should_refuse") and it.get("kind") != "task"]
    by_language: dict[str, list[dict]] = defaultdict(list)
    for it in rows:
        by_language[it.get("lang", "")].append(it)
    items = _interleave(by_language)[: cfg.get("prompts", 24)]
    if not items:
        raise UserError(f"{cfg.get('path', 'data/eval/chat_prompts.jsonl')}: no prompts to answer (must-refuse and "
                        "task prompts are left out)")
    jobs = [(it, scheme, t) for scheme, t in WATERMARK_SETTINGS for it in items]
    params = []
    for i, (_, scheme, t) in enumerate(jobs):
        proc = watermark_processor(config, key, t)
        assert proc.scheme == scheme, (proc.scheme, scheme)
        params.append(SamplingParams(max_tokens=cfg.get("max_tokens", 96), temperature=t, seed=i,
                                     logits_processors=(proc,)))
    answers = model.generate([[{"role": "user", "content": it["prompt"]}] for it, _, _ in jobs], params)
    samples = []
    for (it, scheme, _), answer in zip(jobs, answers):
        prepared = prepare(answer["text"], model.tokenizer)
        r = detect_prepared(prepared, key, config, alpha=alpha)
        wrong = sum(detect_prepared(prepared, k, config, alpha=alpha)["verdict"] == "watermarked" for k in others)
        samples.append({"task": "watermark", "id": f"{it['id']}-{scheme}", "prompt": it["prompt"],
                        "output": answer["text"], "lang": it.get("lang", ""), "scheme": scheme,
                        "tokens": r["tokens"], "generated_tokens": answer["tokens"], "verdict": r["verdict"],
                        "p_value": r["p_value"], "detected": r["verdict"] == "watermarked",
                        "other_keys_detected": wrong, "score": float(r["verdict"] == "watermarked")})
    metrics = {"watermark.detect_rate": M.mean_ci([s["detected"] for s in samples]),
               "watermark.coverage": M.mean_ci([s["verdict"] != "too_short" for s in samples])}
    for scheme, _ in WATERMARK_SETTINGS:
        rows_ = [s for s in samples if s["scheme"] == scheme]
        metrics[f"watermark.detect_rate.{scheme}"] = M.mean_ci([s["detected"] for s in rows_])
        metrics[f"watermark.coverage.{scheme}"] = M.mean_ci([s["verdict"] != "too_short" for s in rows_])
    for lo, hi in LENGTH_BUCKETS + ((LONG_ANSWER, None),):
        rows_ = [s for s in samples if lo <= s["tokens"] and (hi is None or s["tokens"] <= hi)]
        if rows_:
            metrics[f"watermark.detect_rate.{_bucket(lo, hi)}"] = M.mean_ci([s["detected"] for s in rows_])
    judged = [k < s["other_keys_detected"] for s in samples if s["verdict"] != "too_short" for k in range(OTHER_KEYS)]
    if judged:
        metrics["watermark.false_positive_rate.other_key"] = M.mean_ci(judged)
    if cfg.get("sources"):
        human = []
        for h in _human_chunks(cfg, model.tokenizer):
            r = detect_prepared(prepare(h["text"], model.tokenizer), key, config, alpha=alpha)
            human.append({"task": "watermark.human", "id": f"{h['variety']}-{files.stable_hash(h['text']):016x}",
                          "prompt": h["text"][:80], "variety": h["variety"], "tokens": r["tokens"],
                          "verdict": r["verdict"], "p_value": r["p_value"], "detected": r["verdict"] == "watermarked",
                          "score": float(r["verdict"] != "watermarked")})
        judged = [s for s in human if s["verdict"] != "too_short"]
        if judged:
            metrics["watermark.false_positive_rate"] = M.mean_ci([s["detected"] for s in judged])
            for variety in sorted({s["variety"] for s in judged}):
                metrics[f"watermark.false_positive_rate.{variety}"] = M.mean_ci(
                    [s["detected"] for s in judged if s["variety"] == variety])
        samples += human
    return metrics, samples


# -- moderation: the gateway's guard on labelled requests ----------------------------------

def _f1_ci(pred: list[bool], gold: list[bool], n_boot: int = 1000, seed: int = 0) -> dict:
    """F1 of pred against gold, with a percentile-bootstrap interval over items."""
    p, g = np.asarray(pred, bool), np.asarray(gold, bool)

    def f1(tp, fp, fn):
        return np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)

    idx = np.random.default_rng(seed).integers(0, len(p), (n_boot, len(p)))
    pb, gb = p[idx], g[idx]
    boot = f1((pb & gb).sum(1), (pb & ~gb).sum(1), (~pb & gb).sum(1))
    return {"value": float(f1((p & g).sum(), (p & ~g).sum(), (~p & g).sum())),
            "ci_low": float(np.quantile(boot, 0.025)), "ci_high": float(np.quantile(boot, 0.975)), "n": len(p)}


def _prf(prefix: str, pred: list[bool], gold: list[bool]) -> dict:
    """prefix.precision (of what was flagged), prefix.recall (of the positives) and prefix.f1;
    a rate with nothing to count (nothing flagged, no positive) is left out."""
    out = {}
    flagged = [g for p, g in zip(pred, gold) if p]
    positives = [p for p, g in zip(pred, gold) if g]
    if flagged:
        out[f"{prefix}.precision"] = M.mean_ci(flagged)
    if positives:
        out[f"{prefix}.recall"] = M.mean_ci(positives)
    if pred:
        out[f"{prefix}.f1"] = _f1_ci(pred, gold)
    return out


def moderation(model, cfg: dict):
    """The gateway's guard (hkllm/safety/guard.py, `policy` default recipes/safety/guard_policy.yaml)
    on the labelled requests of `path` (default data/safety/moderation.jsonl), `split` test.
    It does not use the model: the guard is the server's, so every model gets the same numbers.
    It is in the suite so that a release records the guard it ships with (the guard's
    fingerprint is in every sample).

    A request counts as flagged when the guard's `flagged` is set; `harmful` items are the
    positives, `risky` and `ordinary` ones the negatives. moderation.recall / .precision / .f1
    overall and per language (moderation.recall.<lang>; moderation.recall.worst is the lowest);
    moderation.over_flag_rate is the share of negatives flagged, per language and per label
    (moderation.over_flag_rate.label.<label>). Per category, moderation.category.<c>.precision /
    .recall / .f1 compare the guard's category flags with the item's categories, and .caught is
    the share of the category's items flagged at all (what the user sees: refused or not)."""
    from hkllm.safety.guard import guard_for

    guard = guard_for(cfg.get("policy"))
    split = cfg.get("split", "test")
    items = [it for it in read_jsonl(cfg.get("path", "data/safety/moderation.jsonl"), ("id", "lang", "label", "text"))
             if it.get("split", split) == split]
    if not items:
        raise UserError(f"{cfg.get('path', 'data/safety/moderation.jsonl')}: no items in split {split!r}")
    samples = []
    for it in items:
        m = guard.check_text(it["text"])
        harmful = it["label"] == "harmful"
        samples.append({"task": "moderation", "id": it["id"], "prompt": it["text"], "lang": it["lang"],
                        "label": it["label"], "categories": list(it.get("categories", [])), "flagged": m.flagged,
                        "flagged_categories": sorted(c for c, f in m.categories.items() if f), "action": m.action,
                        "guard": guard.model, "score": float(m.flagged == harmful)})
    gold = [s["label"] == "harmful" for s in samples]
    metrics = _prf("moderation", [s["flagged"] for s in samples], gold)
    langs = sorted({s["lang"] for s in samples})
    for lang in langs:
        rows = [s for s in samples if s["lang"] == lang]
        metrics.update(_prf(f"moderation.{lang}", [s["flagged"] for s in rows], [s["label"] == "harmful" for s in rows]))
    for name in ("precision", "recall", "f1"):      # moderation.recall.yue rather than moderation.yue.recall
        for lang in langs:
            if f"moderation.{lang}.{name}" in metrics:
                metrics[f"moderation.{name}.{lang}"] = metrics.pop(f"moderation.{lang}.{name}")
    recalls = {lang: metrics[f"moderation.recall.{lang}"] for lang in langs if f"moderation.recall.{lang}" in metrics}
    if recalls:
        worst = min(recalls, key=lambda lang: recalls[lang]["value"])
        metrics["moderation.recall.worst"] = {**recalls[worst], "lang": worst}
    negatives = [s for s in samples if s["label"] != "harmful"]
    if negatives:
        metrics["moderation.over_flag_rate"] = M.mean_ci([s["flagged"] for s in negatives])
        for lang in sorted({s["lang"] for s in negatives}):
            metrics[f"moderation.over_flag_rate.{lang}"] = M.mean_ci([s["flagged"] for s in negatives if s["lang"] == lang])
        for label in sorted({s["label"] for s in negatives}):
            metrics[f"moderation.over_flag_rate.label.{label}"] = M.mean_ci(
                [s["flagged"] for s in negatives if s["label"] == label])
    for cat in sorted({c for s in samples for c in s["categories"]}):
        metrics.update(_prf(f"moderation.category.{cat}", [cat in s["flagged_categories"] for s in samples],
                            [cat in s["categories"] for s in samples]))
        metrics[f"moderation.category.{cat}.caught"] = M.mean_ci([s["flagged"] for s in samples if cat in s["categories"]])
    return metrics, samples


# -- external benchmarks on disk ------------------------------------------------------------

def _last_number(text: str) -> str | None:
    nums = re.findall(r"-?\d[\d,]*\.?\d*", text)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


def external(model, cfg: dict):
    """Yue-Benchmark / HKCanto-Eval files a user has (--data-dir): MC by log-likelihood,
    math by the last number of the answer, translation and QA by chrF."""
    from hkllm.eval.external import GenItem, load_external

    name = cfg["name"]
    items = load_external(name, cfg["data_dir"], limit=cfg.get("limit"))   # a stable, stratified subset
    if not items:
        return {}, []
    if not isinstance(items[0], GenItem):
        rows = [{"id": it.id, "question": it.question, "choices": it.choices, "answer": it.answer, "lang": it.lang}
                for it in items]
        samples = multiple_choice(model, rows, f"external.{name}")
        return {f"external.{name}.acc": M.mean_ci([s["correct"] for s in samples])}, samples
    outputs = model.chat([[{"role": "user", "content": it.prompt}] for it in items], max_tokens=cfg.get("max_tokens", 128))
    samples = []
    for it, out in zip(items, outputs):
        if it.kind == "math":
            score = float(_last_number(out) == it.reference)
        else:
            score = M.sentence_chrf(out, it.reference)
        samples.append({"task": f"external.{name}", "id": it.id, "prompt": it.prompt, "output": out,
                        "reference": it.reference, "score": score})
    metric = "acc" if items[0].kind == "math" else "chrf"
    return {f"external.{name}.{metric}": M.mean_ci([s["score"] for s in samples])}, samples


TASKS = {"lm": lm, "knowledge": knowledge, "fidelity": fidelity, "translation": translation,
         "consistency": consistency, "safety": safety, "chat": chat, "watermark": watermark, "moderation": moderation}
