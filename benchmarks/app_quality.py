"""港文通's output with a real model behind it: format compliance of drafts, register and chrF of rewrites.

    .venv/bin/python benchmarks/app_quality.py --model runs/quickstart/dpo
    .venv/bin/python benchmarks/app_quality.py --model runs/smollm2/sft --briefs 20

Drafts: `--briefs` briefs (default 50) over every template in hkllm/app/templates — each template's
reference values (tests/app/test_templates.py) with the subject, facts and dates varied — go
through the app's own prompt (tasks.draft), the model (embedded engine, greedy, as consistency
mode serves), and tasks.assemble_draft. Reported: the share of drafts that pass every format rule
of their template, the same over the rules the template's layout fills alone (reference line,
salutation, numbering, signature block, 副本送, dates: target ≥ 95%), per rule how often the
model's prose broke it (Cantonese in formal text, Simplified or Taiwan forms, English spelling…),
and the share whose prose is degenerate, which format rules do not check (read the drafts).

Citations: the 63 questions of data/app/retrieval_questions.jsonl asked through tasks.ask over
data/demo/docs + data/app/docs (one Library, as uploads): citation precision = the share of the
answers' valid [n] whose passage belongs to the question's document and contains its answer; also
the share of answers citing at all and of [n] that were never given.

Rewrites: the yue → zh-hant pairs of data/eval/translation.jsonl (never trained on) through
tasks.rewrite(text, "yue_to_written"): the share of outputs `hkllm text detect` labels zh-hant
(register), and chrF against the references (sacrebleu).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from pathlib import Path

from hkllm.app import tasks
from hkllm.app.templates import load_all

REPO = Path(__file__).resolve().parents[1]

# Rules the template's skeleton fills from the form (the model's prose cannot break them).
LAYOUT = {"zh.reference", "zh.salutation", "zh.numbering", "zh.signature", "zh.copy_to", "zh.date", "zh.memo_header",
          "zh.meeting_details", "en.salutation_closing", "en.date_format", "press.ends", "press.issue_time",
          "press.dateline"}
SUBJECTS = ["有關觀塘區街燈損壞的投訴", "有關屯門公園開放時間的查詢", "有關沙田區垃圾收集安排的意見", "有關中西區行人路維修的查詢",
            "有關元朗區渠務問題的投訴", "有關深水埗區街市衞生的意見"]
FACTS = ["已派員視察並安排維修", "已聯絡承辦商跟進", "已加強巡查", "會於下月檢討安排", "已將意見轉交相關部門"]
DATES = ["2026-11-03", "2026-11-12", "2026-11-20", "2026-11-27"]


def briefs(n: int) -> list[tuple[str, dict]]:
    out, i = [], 0
    templates = list(load_all())
    while len(out) < n:
        tid = templates[i % len(templates)]
        values = dict(load_all()[tid].example)
        k = i // len(templates)
        for field, options in (("subject", SUBJECTS), ("facts", FACTS), ("received", DATES), ("points", FACTS)):
            if field in values:
                values[field] = options[(i + k) % len(options)]
        out.append((tid, values))
        i += 1
    return out


def degenerate(answer: str) -> bool:
    """What no format rule sees: U+FFFD (a character cut in two), one line repeated 3+ times, or a
    phrase looping (under 30% distinct 4-character grams)."""
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    grams = [answer[i:i + 4] for i in range(max(0, len(answer) - 3))]
    return ("\ufffd" in answer or any(lines.count(line) >= 3 for line in set(lines))
            or (len(grams) >= 20 and len(set(grams)) / len(grams) < 0.3))


async def answer_all(engine, conversations: list[list[dict]], max_tokens: int) -> list[str]:
    from hkllm.serve.contract import SamplingParams

    async def one(messages):
        gen = await engine.chat(messages, SamplingParams(max_tokens=max_tokens))
        return "".join([e.text async for e in gen.events])

    return await asyncio.gather(*(one(m) for m in conversations))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--briefs", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--questions", type=int, default=None, help="ask only the first N retrieval questions")
    ap.add_argument("--json", type=Path, help="also write the numbers and every draft here")
    args = ap.parse_args()
    import sacrebleu

    from hkllm.serve.engine import LocalEngine
    from hkllm.text import detect

    engine = LocalEngine(args.model, max_batch=16)
    templates = load_all()
    work = briefs(args.briefs)
    answers = asyncio.run(answer_all(engine, [tasks.draft(t, v) for t, v in work], args.max_tokens))
    drafts, broken, layout_ok, all_ok, garbled = [], Counter(), 0, 0, 0
    for (tid, values), answer in zip(work, answers):
        d = tasks.assemble_draft(tid, values, answer)
        rules = [f["rule"] for f in d["failures"]]
        layout = [r for r in rules if r in LAYOUT]
        layout_ok += not layout
        all_ok += not rules
        broken.update(set(rules) - set(layout))
        bad = degenerate(answer)
        garbled += bad
        drafts.append({"template": tid, "answer": answer, "failures": rules, "degenerate": bad})
    n = len(work)
    print(f"model {args.model}: {n} draft briefs over {len(templates)} templates, greedy, ≤ {args.max_tokens} tokens\n")
    print("| drafts | share |\n|---|---:|")
    print(f"| pass every rule of their template | {all_ok / n:.2f} ({all_ok}/{n}) |")
    print(f"| pass the layout rules (what the template fills; target ≥ 0.95) | {layout_ok / n:.2f} ({layout_ok}/{n}) |")
    print(f"| empty answer (no paragraphs) | {sum(not a.strip() for a in answers) / n:.2f} |")
    print(f"| prose degenerate (broken characters, a line 3+ times, or one phrase looping) | {garbled / n:.2f} |")
    print("\nRules the model's prose broke (drafts):\n\n| rule | drafts |\n|---|---:|")
    for rule, k in broken.most_common():
        print(f"| {rule} | {k} |")
    from hkllm.app.retrieval import Library, normalize

    library = Library()
    for path in sorted([*(REPO / "data/demo/docs").iterdir(), *(REPO / "data/app/docs").iterdir()]):
        library.add_file(path, owner="bench")
    questions = [json.loads(line) for line in (REPO / "data/app/retrieval_questions.jsonl").read_text(encoding="utf-8")
                 .splitlines() if line.strip()][:args.questions]
    asked = [tasks.ask(library, "bench", q["query"], k=4, count_tokens=lambda t: len(engine.tokenizer.encode(t)),
                       context_tokens=engine.max_model_len or 1024, answer_tokens=128) for q in questions]
    replies = asyncio.run(answer_all(engine, [m for m, _ in asked], 128))
    valid = right = citing = never = 0
    for q, (_, hits), reply in zip(questions, asked, replies):
        cites = tasks.check_citations(reply, hits)
        citing += bool(cites)
        by_n = {h.n: h for h in hits}
        for c in cites:
            if not c["exists"]:
                never += 1
                continue
            valid += 1
            h = by_n[c["n"]]
            right += h.doc_name == q["doc"] and normalize(q["answer"]) in normalize(h.text)
    total = valid + never
    print(f"\nCitations ({len(questions)} questions asked of {len(library.documents(owner='bench'))} documents): "
          f"answers citing [n] {citing / len(questions):.2f}; [n] never given {never}/{total}; "
          f"citation precision {right / valid if valid else float('nan'):.2f} ({right}/{valid})")
    print(f"- {questions[0]['query']} → {replies[0][:160]!r}")
    pairs = [json.loads(line) for line in (REPO / "data/eval/translation.jsonl").read_text(encoding="utf-8").splitlines()
             if line.strip()]
    pairs = [p for p in pairs if p["src_lang"] == "yue" and p["tgt_lang"] == "zh-hant"]
    outs = asyncio.run(answer_all(engine, [tasks.rewrite(p["source"], "yue_to_written") for p in pairs], 96))
    outs = [tasks.clean_answer(o) for o in outs]
    register = sum(detect(o).variety == "zh-hant" for o in outs) / len(outs)
    chrf = sacrebleu.corpus_chrf(outs, [[p["reference"] for p in pairs]]).score
    print(f"\nRewrites (Cantonese → written Chinese, {len(pairs)} pairs of data/eval/translation.jsonl): "
          f"zh-hant by `detect` {register:.2f}, chrF {chrf:.1f}")
    for p, o in list(zip(pairs, outs))[:3]:
        print(f"- {p['source']} → {o!r} (reference {p['reference']})")
    print(f"\nA draft, verbatim ({work[0][0]}):\n\n{tasks.assemble_draft(*work[0], answers[0])['text']}")
    if args.json:
        args.json.write_text(json.dumps({"drafts": drafts, "register": register, "chrf": chrf}, ensure_ascii=False,
                                        indent=1))


if __name__ == "__main__":
    main()
