"""The built-in evaluation tasks. Each is a function `task(model, cfg) -> (metrics, samples)`:

- metrics: {name: {"value", "ci_low", "ci_high", "n"}} — every number with its interval;
- samples: one dict per item (task, id, prompt, output, score, and what the gate pairs on).

`model` is a backend (backends.py): loglikelihoods, doc_nll and chat are all a task may use.
`cfg` is the task's block of the suite YAML, paths already resolved. Read top to bottom:
lm → knowledge → fidelity → translation → consistency → safety → chat → external.
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
                   "lang": lang, "variety": variety, "degenerate": M.is_degenerate(answer), "stopped": finish == "stop",
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
         "consistency": consistency, "safety": safety, "chat": chat}
