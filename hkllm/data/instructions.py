"""`hkllm data instructions`: a chat training set generated from tables and seed files.

    hkllm data instructions recipes/data/instructions.yaml --out runs/instructions

A small model learns to answer from many short, varied examples, and hand-writing thousands of
them in three varieties is not possible; so templates expand what is written once:
- facts   (data/chat/seeds/facts.yaml): each fact asked several ways in yue / zh-hant / en →
          question-answer chats, multiple-choice chats (shuffled options, the answer's text as
          the reply), and fact documents for continued pre-training (statements and Q/A lines);
- tables  (open-data CSV/JSON): question/answer templates per row, in the recipe;
- safety  (data/chat/seeds/safety.yaml): must-refuse requests → a refusal in the asker's
          variety; harmless requests with risky words → a helpful answer (opened by OPENER);
- general (data/chat/seeds/general.yaml): everyday Q&A, Cantonese → written Chinese rewrites
          and translations from parallel sentences, letters;
- hand-written conversations (OpenAI `messages` JSONL), kept as they are;
- preference pairs for DPO from the same seeds, on the behaviours the release gate checks and
  SFT alone teaches a small model poorly: the asker's variety over another variety's answer to the
  same fact, a refusal over a harmless-looking answer to a must-refuse request, an answer over a
  refusal to a harmless look-alike, the fact's answer over another fact's.
Every generated chat passes the data build's decontamination filter against the evaluation
sets (token 13-grams, 8-grams for short items): the report counts what was dropped, so an
evaluation question is never trained on word for word. Output: `chat.jsonl` (messages, lang,
task), `facts.jsonl` (documents: text, variety), `preferences.jsonl` (prompt, chosen, rejected,
kind, lang), `report.json` and `report.md`.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hkllm import config
from hkllm.errors import UserError
from hkllm.files import write_atomic

VARIETIES = ("yue", "zh-hant", "en")

# Framings that vary how a request is put, so that politeness or a prefix is never the signal.
ASK_PREFIX = {
    "yue": ["", "", "", "請問", "想問下，", "唔該，", "我想知", "問多句：", "喂，"],
    "zh-hant": ["", "", "", "請問", "想請教：", "你好，", "請告訴我：", "我想了解："],
    "en": ["", "", "", "Please tell me: ", "Quick question: ", "Hi! ", "I'd like to know: ", "Can you tell me: "],
}
# Multiple-choice instructions; the reply is the chosen option's text (a tiny model recalls the
# fact far more reliably than it maps the fact back to a letter), framed by MC_ANSWER.
MC_INSTRUCTION = {
    "yue": ["揀一個答案。", "以下邊個啱？", "請揀正確答案。", "", "答案係邊個？"],
    "zh-hant": ["請選出正確答案。", "以下哪一項正確？", "選一個答案。", "", "正確答案是哪一個？"],
    "en": ["Pick one.", "Which one is right?", "Choose the correct option.", "", "Select the answer."],
}
# The frame of a multiple-choice reply, in the asker's variety: a bare option ("社會福利署", "天后",
# "999") belongs to no variety, and 730 such replies to Cantonese questions taught the model to
# answer Cantonese in written Chinese (`hkllm text detect` read them as zh-hant or zh-hans).
MC_ANSWER = {"yue": "答案係{a}。", "zh-hant": "正確答案是{a}。", "en": "The answer is {a}."}
SYSTEM = {
    "yue": ["你係一個熟悉香港嘅助手。", "你係港文通，用廣東話簡潔回答。"],
    "zh-hant": ["你是熟悉香港的助手。", "你是港文通，請用書面語簡潔回答。"],
    "en": ["You are a helpful assistant who knows Hong Kong.", "You are HKDocs, a concise assistant for Hong Kong."],
}
REWRITE = ["將呢句廣東話改寫成書面語：{src}", "請把以下粵語句子改寫為書面語：{src}", "改做書面中文：{src}",
           "Rewrite this Cantonese sentence in Standard Written Chinese: {src}"]
LANG_NAME = {"yue": {"yue": "廣東話", "zh-hant": "書面語", "en": "英文"},
             "zh-hant": {"yue": "粵語", "zh-hant": "書面語", "en": "英文"},
             "en": {"yue": "Cantonese", "zh-hant": "written Chinese", "en": "English"}}
TRANSLATE = {"yue": ["將呢句譯做{tgt}：{src}", "幫我翻譯做{tgt}：{src}"],
             "zh-hant": ["請將以下句子翻譯成{tgt}：{src}", "請譯成{tgt}：{src}"],
             "en": ["Translate into {tgt}: {src}", "How do you say this in {tgt}? {src}"]}
DOC_QA = {"yue": ("問：{q}\n答：{a}", "問題：{q}\n答案：{a}"), "zh-hant": ("問：{q}\n答：{a}", "問題：{q}\n答案：{a}"),
          "en": ("Q: {q}\nA: {a}", "Question: {q}\nAnswer: {a}")}

PAIR_KINDS = ("variety", "grounded", "refuse", "answer")     # preference pairs (preference_pairs)
# One opening per variety for helpful answers to requests. Refusals open alike ("I can't…",
# "我唔可以…"), helpful answers each differently, so a small model's first token splits its answer
# mass over many words and gives all of its refusal mass to one: greedy decoding then refuses
# wherever the model is only a little unsure (measured: 'I' 0.17-0.31 over 'The' ~0.1 for harmless
# English requests). With one opening, the first token is a choice between two: answer or refuse.
# Cantonese and written Chinese share theirs: distinct ones (冇問題 / 沒問題) split the answer mass
# in two again, and the variety was chosen worse at the first token than later (yue 46% vs 60%).
OPENER = {"yue": "可以。", "zh-hant": "可以。", "en": "Certainly. "}


@dataclass
class Spec:
    path: Path = field(default=Path("."), metadata={"internal": True})   # the recipe file (not a YAML field)
    seed: int = 0
    facts: str | None = None
    safety: str | None = None
    general: str | None = None
    conversations: list[str] = field(default_factory=list)   # OpenAI `messages` JSONL files
    tables: list[dict] = field(default_factory=list)         # {path, encoding, yue|zh-hant|en: [{q, a}]}
    decontaminate: list[str] = field(default_factory=list)
    mc_shuffles: int = 3          # multiple-choice chats per fact question
    refusal_framings: int = 3     # framings per must-refuse request
    answer_framings: int = 2      # framings per harmless-but-risky request (more: fewer over-refusals)
    # Helpful answers to requests (harmless look-alikes, everyday questions) open with OPENER (its
    # comment says why); false leaves the seeds' answers as written.
    helpful_opener: bool = True
    # DPO pairs written to preferences.jsonl, by kind (PAIR_KINDS; [] for none): see preference_pairs
    preference_kinds: list[str] = field(default_factory=lambda: list(PAIR_KINDS))

    def resolve(self, rel: str) -> Path:
        return (self.path.parent / rel).resolve()


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    spec = config.load(path, Spec, missing="instructions recipe")
    spec.path = path
    for name in ("facts", "safety", "general"):
        value = getattr(spec, name)
        if value and not spec.resolve(value).exists():
            raise UserError(f"{path}: field '{name}': file not found: {spec.resolve(value)}")
    unknown = sorted(set(spec.preference_kinds) - set(PAIR_KINDS))
    if unknown:
        raise UserError(f"{path}: field 'preference_kinds': unknown kind {unknown[0]!r} (one of {', '.join(PAIR_KINDS)})")
    return spec


def _yaml(path: Path):
    return config.read_yaml(path, "seed file") or {}


def _chat(prompt: str, answer: str, lang: str, task: str, rng: random.Random) -> dict:
    messages = [{"role": "user", "content": prompt.strip()}, {"role": "assistant", "content": answer.strip()}]
    if rng.random() < 0.15:
        messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM[lang])})
    return {"messages": messages, "lang": lang, "task": task}


def _framed(question: str, lang: str, rng: random.Random) -> str:
    return rng.choice(ASK_PREFIX[lang]) + question


# -- facts ------------------------------------------------------------------------------------

def _check_fact(fact, where: str) -> None:
    if not isinstance(fact, dict) or "id" not in fact:
        raise UserError(f"{where}: each fact needs an 'id'")
    for v in VARIETIES:
        block = fact.get(v)
        if not isinstance(block, dict):
            raise UserError(f"{where} ({fact['id']}): field '{v}' missing")
        for key, kind in (("questions", list), ("answer", str), ("short", str), ("wrong", list)):
            if not isinstance(block.get(key), kind):
                raise UserError(f"{where} ({fact['id']}): field '{v}.{key}' must be a {kind.__name__}")


def fact_chats(facts: list[dict], spec: Spec, rng: random.Random) -> list[dict]:
    out = []
    for fact in facts:
        for v in VARIETIES:
            b = fact[v]
            for q in b["questions"]:
                out.append(_chat(_framed(q, v, rng), b["answer"], v, "fact_qa", rng))
                for _ in range(spec.mc_shuffles):
                    options = [b["short"]] + list(b["wrong"])
                    rng.shuffle(options)
                    listing = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))
                    prompt = f"{q}\n{listing}\n{rng.choice(MC_INSTRUCTION[v])}"
                    out.append(_chat(prompt, MC_ANSWER[v].format(a=b["short"]), v, "fact_mc", rng))
    return out


def fact_documents(facts: list[dict], rng: random.Random, per_doc: int = 6) -> list[dict]:
    """Statements and Q/A lines for continued pre-training, a few facts per document."""
    docs = []
    for v in VARIETIES:
        order = list(facts)
        for round_ in range(2):
            rng.shuffle(order)
            for i in range(0, len(order), per_doc):
                lines = []
                for fact in order[i:i + per_doc]:
                    b = fact[v]
                    lines.append(b["answer"])
                    template = DOC_QA[v][round_ % 2]
                    lines.append(template.format(q=rng.choice(b["questions"]), a=b["short"]))
                docs.append({"text": "\n".join(lines), "variety": v, "source": "facts"})
    return docs


# -- tables -----------------------------------------------------------------------------------

def _table_rows(path: Path, encoding: str = "utf-8-sig") -> list[dict]:
    """A table's rows as the data build reads them (hkllm/data/readers.py), cells cleaned; any bad row is an error."""
    from hkllm.data.encodings import decode_failure
    from hkllm.data.readers import clean_row, table_rows

    def malformed(where: str, why: str):
        raise UserError(f"{path.parent / where}: {why}")

    try:
        return [clean_row(row) for _, row in table_rows(path, path.name, encoding, malformed)]
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    except UnicodeDecodeError:
        raise UserError(decode_failure(path, str(path), encoding)) from None


def table_chats(spec: Spec, rng: random.Random) -> list[dict]:
    out = []
    for i, table in enumerate(spec.tables):
        where = f"{spec.path}: tables[{i}]"
        if not isinstance(table, dict) or "path" not in table:
            raise UserError(f"{where}: needs 'path' and question/answer templates per variety")
        rows = _table_rows(spec.resolve(table["path"]), table.get("encoding", "utf-8-sig"))
        for v in VARIETIES:
            for j, t in enumerate(table.get(v, [])):
                for row in rows:
                    try:
                        q, a = t["q"].format(**row), t["a"].format(**row)
                    except KeyError as e:
                        raise UserError(f"{where}.{v}[{j}]: column {e} is not in {table['path']}") from None
                    out.append(_chat(_framed(q, v, rng), a, v, "table_qa", rng))
    return out


# -- safety -----------------------------------------------------------------------------------

def _opened(block: dict) -> dict:
    """A seed block's {prompt, answer} lists, keyed by variety, with each answer opened by OPENER
    (other keys, and malformed items for the readers below to name, are left as they are)."""
    def opened(items, variety):
        return [{**it, "answer": OPENER[variety] + it["answer"]}
                if isinstance(it, dict) and isinstance(it.get("answer"), str) else it for it in items]
    return {k: opened(v, k) if k in OPENER and isinstance(v, list) else v for k, v in block.items()}


def safety_chats(seeds: dict, spec: Spec, rng: random.Random) -> list[dict]:
    out = []
    shared = seeds.get("refusals", {})
    for block in seeds.get("refuse", []):
        refusals = {**shared, **(block.get("refusals") or {})}
        for v in VARIETIES:
            if not refusals.get(v):
                raise UserError(f"{spec.safety}: no refusals for {v} (category {block.get('category')})")
            for request in block.get(v, []):
                for k in range(spec.refusal_framings):
                    prompt = request if k == 0 else _framed(request, v, rng)
                    out.append(_chat(prompt, rng.choice(refusals[v]), v, f"refuse:{block.get('category')}", rng))
    for block in seeds.get("answer", []):
        for v in VARIETIES:
            for item in block.get(v, []):
                for k in range(spec.answer_framings):
                    prompt = item["prompt"] if k == 0 else _framed(item["prompt"], v, rng)
                    out.append(_chat(prompt, item["answer"], v, f"answer:{block.get('category')}", rng))
    return out


# -- preference pairs ------------------------------------------------------------------------

def _pair(prompt: str, chosen: str, rejected: str, lang: str, kind: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt.strip()}],
            "chosen": [{"role": "assistant", "content": chosen.strip()}],
            "rejected": [{"role": "assistant", "content": rejected.strip()}], "kind": kind, "lang": lang}


def preference_pairs(facts: list[dict], seeds: dict, kinds: list[str], rng: random.Random) -> list[dict]:
    """Pairs whose two answers differ in one thing the gate measures (module docstring). Refusals
    get variety pairs too (a refusal in the asker's variety over one in the other), so that
    teaching the variety never teaches the model to stop refusing."""
    out = []
    other_chinese = {"yue": "zh-hant", "zh-hant": "yue"}     # the pair a small model confuses; English is easy
    for fact in facts:
        rest = [f for f in facts if f is not fact]
        for v in VARIETIES:
            if "variety" in kinds:
                for q in fact[v]["questions"]:
                    w = other_chinese.get(v) or rng.choice([w for w in VARIETIES if w != v])
                    out.append(_pair(_framed(q, v, rng), fact[v]["answer"], fact[w]["answer"], v, "variety"))
            if "grounded" in kinds and rest:
                out.append(_pair(_framed(rng.choice(fact[v]["questions"]), v, rng), fact[v]["answer"],
                                 rng.choice(rest)[v]["answer"], v, "grounded"))
    shared = seeds.get("refusals", {})
    helpful = {v: [item["answer"] for block in seeds.get("answer", []) for item in block.get(v, [])]
               for v in VARIETIES}
    for block in seeds.get("refuse", []):
        refusals = {**shared, **(block.get("refusals") or {})}
        for v in VARIETIES:
            for request in block.get(v, []):
                if "refuse" in kinds and helpful[v]:
                    out.append(_pair(_framed(request, v, rng), rng.choice(refusals[v]), rng.choice(helpful[v]), v,
                                     "refuse"))
                if "variety" in kinds and v in other_chinese and refusals.get(other_chinese[v]):
                    out.append(_pair(_framed(request, v, rng), rng.choice(refusals[v]),
                                     rng.choice(refusals[other_chinese[v]]), v, "variety"))
    if "answer" in kinds:
        for block in seeds.get("answer", []):
            for v in VARIETIES:
                for item in block.get(v, []):
                    if shared.get(v):
                        out.append(_pair(_framed(item["prompt"], v, rng), item["answer"], rng.choice(shared[v]), v,
                                         "answer"))
    return out


# -- general ----------------------------------------------------------------------------------

def general_chats(seeds: dict, rng: random.Random) -> list[dict]:
    out = []
    for v, items in (seeds.get("qa") or {}).items():
        for item in items:
            for k in range(2):
                out.append(_chat(item["prompt"] if k == 0 else _framed(item["prompt"], v, rng), item["answer"], v,
                                 "general_qa", rng))
    for triple in seeds.get("parallel") or []:
        rewrite = rng.choice(REWRITE)
        asked_in = "en" if rewrite.startswith("Rewrite") else "zh-hant"
        out.append(_chat(rewrite.format(src=triple["yue"]), triple["zh-hant"], asked_in, "rewrite", rng))
        for src in VARIETIES:
            for tgt in VARIETIES:
                if src != tgt:
                    asked_in = rng.choice([src, tgt]) if "en" not in (src, tgt) else rng.choice(VARIETIES)
                    frame = rng.choice(TRANSLATE[asked_in])
                    prompt = frame.format(tgt=LANG_NAME[asked_in][tgt], src=triple[src])
                    out.append(_chat(prompt, triple[tgt], asked_in, f"translate:{src}-{tgt}", rng))
    for v, items in (seeds.get("letters") or {}).items():
        for item in items:
            out.append(_chat(item["prompt"], item["answer"], v, "letter", rng))
    return out


def hand_written(spec: Spec) -> list[dict]:
    from hkllm.data.chat import chat_records, validate_messages

    out = []
    for rel in spec.conversations:
        for where, r in chat_records(spec.resolve(rel)):
            messages = validate_messages(r.get("messages") if isinstance(r, dict) else None, where)
            out.append({"messages": messages, "lang": r.get("lang", "unknown"), "task": f"hand:{r.get('task', 'chat')}"})
    return out


# -- decontamination, writing -----------------------------------------------------------------

def decontaminator(spec: Spec):
    """One filter (one n-gram index of the evaluation sets) for everything generate() writes."""
    from hkllm.data.steps import Decontaminate, load_eval_texts

    return Decontaminate(load_eval_texts([spec.resolve(p) for p in spec.decontaminate]))


def decontaminate(chats: list[dict], step) -> tuple[list[dict], list[dict]]:
    from datatrove.data import Document

    kept, dropped = [], []
    for i, c in enumerate(chats):
        text = "\n".join(m["content"] for m in c["messages"])
        (kept if step.filter(Document(text=text, id=str(i))) is True else dropped).append(c)
    return kept, dropped


def generate(spec: Spec) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(kept chats, dropped chats, fact documents, preference pairs)."""
    rng = random.Random(spec.seed)
    chats, docs, pairs = [], [], []
    facts, seeds = [], {}
    if spec.facts:
        facts = _yaml(spec.resolve(spec.facts))
        if not isinstance(facts, list):
            raise UserError(f"{spec.resolve(spec.facts)}: expected a list of facts")
        for i, fact in enumerate(facts):
            _check_fact(fact, f"{spec.resolve(spec.facts)}: fact {i + 1}")
        chats += fact_chats(facts, spec, rng)
        docs = fact_documents(facts, rng)
    chats += table_chats(spec, rng)
    if spec.safety:
        seeds = _yaml(spec.resolve(spec.safety))
        if spec.helpful_opener:
            seeds = {**seeds, "answer": [_opened(block) for block in seeds.get("answer", [])]}
        chats += safety_chats(seeds, spec, rng)
    if spec.preference_kinds:
        pairs = preference_pairs(facts, seeds, spec.preference_kinds, rng)
    if spec.general:
        general = _yaml(spec.resolve(spec.general))
        if spec.helpful_opener:
            general = {**general, "qa": _opened(general.get("qa") or {})}
        chats += general_chats(general, rng)
    chats += hand_written(spec)
    step = decontaminator(spec)
    kept, dropped = decontaminate(chats, step)
    if docs:
        doc_chats = [{"messages": [{"role": "assistant", "content": d["text"]}], "doc": d} for d in docs]
        docs = [c["doc"] for c in decontaminate(doc_chats, step)[0]]
    if pairs:
        pair_chats = [{"messages": p["prompt"] + p["chosen"] + p["rejected"], "lang": p["lang"],
                       "task": f"pair:{p['kind']}", "pair": p} for p in pairs]
        kept_pairs, dropped_pairs = decontaminate(pair_chats, step)
        dropped += [{k: c[k] for k in ("messages", "lang", "task")} for c in dropped_pairs]
        pairs = [c["pair"] for c in kept_pairs]
        rng.shuffle(pairs)
    rng.shuffle(kept)
    return kept, dropped, docs, pairs


def report(kept: list[dict], dropped: list[dict], docs: list[dict], pairs: list[dict]) -> dict:
    by = Counter((c["task"].split(":")[0], c["lang"]) for c in kept)
    by.update((f"pair:{p['kind']}", p["lang"]) for p in pairs)
    tasks = sorted({t for t, _ in by})
    return {"chats": len(kept), "fact_documents": len(docs), "preference_pairs": len(pairs),
            "dropped_by_decontamination": len(dropped),
            "dropped_examples": [c["messages"][-2]["content"][:80] for c in dropped[:5] if len(c["messages"]) > 1],
            "by_task": {t: {v: by.get((t, v), 0) for v in sorted({lang for _, lang in by})} for t in tasks}}


def render_report(r: dict) -> str:
    langs = sorted({v for row in r["by_task"].values() for v in row})
    lines = ["| task | " + " | ".join(langs) + " |", "|---|" + "---:|" * len(langs)]
    lines += [f"| {t} | " + " | ".join(str(row.get(v, 0)) for v in langs) + " |" for t, row in r["by_task"].items()]
    lines.append(f"\n{r['chats']} chats, {r['fact_documents']} fact documents, {r['preference_pairs']} "
                 "preference pairs (rows `pair:*`); "
                 f"{r['dropped_by_decontamination']} dropped by decontamination against the evaluation sets.")
    return "\n".join(lines)


def build(spec: Spec, out: str | Path) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kept, dropped, docs, pairs = generate(spec)
    write_atomic(out / "chat.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in kept))
    write_atomic(out / "facts.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    write_atomic(out / "preferences.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    write_atomic(out / "dropped.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in dropped))
    r = report(kept, dropped, docs, pairs)
    write_atomic(out / "report.json", json.dumps(r, ensure_ascii=False, indent=1))
    write_atomic(out / "report.md", render_report(r) + "\n")
    return r
