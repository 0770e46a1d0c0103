"""Retrieval for the document assistant: recall@1/3/5 and MRR@10 on question → passage pairs.

    .venv/bin/python benchmarks/retrieval.py            # markdown table
    .venv/bin/python benchmarks/retrieval.py --json     # the same numbers as JSON

Documents: data/demo/docs/ and data/app/docs/ (short Hong Kong public-service documents in zh-hant,
yue and en, written for hkllm). Questions: data/app/retrieval_questions.jsonl; a passage answers a
question when it belongs to the question's document and contains its `answer` (compared after
hkllm.app.retrieval's normalization). Subsets: two-character queries, Simplified input,
cross-lingual (the answer is in the other language's document, e.g. the typhoon notice in English
and Chinese), and by the query's variety.

Systems, on the same passages (hkllm.app.retrieval.chunk):
- `hkllm bigram`: hkllm.app.retrieval.Library — HK-form normalization, Han unigrams+bigrams and
  words in FTS5 unicode61, bigram queries, BM25.
- `hkllm bigram + translated query`: the same, searching also with the question's `translation`
  (written by hand for the cross-lingual questions, standing in for the model's translation that
  the app will ask for; `Library.search(..., also=[...])`, reciprocal rank fusion). The other
  questions have none, so only the cross-lingual rows differ: an upper bound, not a measurement
  of a translating model.
- `fts5 trigram`: SQLite's trigram tokenizer on the raw text, queried with every three-character
  substring of each query term, OR-ed, BM25 (the best a trigram index can do with a Chinese question
  that has no spaces; a two-character term has no trigram and matches nothing).
- `fts5 trigram + HK norm`: the same, with text and query normalized as hkllm does, to separate the
  tokenizer's effect from normalization's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hkllm.app.retrieval import Library, normalize, verify_quote  # noqa: E402

DOC_DIRS = [ROOT / "data/demo/docs", ROOT / "data/app/docs"]
QUESTIONS = ROOT / "data/app/retrieval_questions.jsonl"
KS = (1, 3, 5)
DEPTH = 10
OWNER = "bench"


def load_library() -> tuple[Library, dict[str, int]]:
    lib = Library(":memory:")
    ids = {}
    for folder in DOC_DIRS:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                ids[path.name] = lib.add_file(path, owner=OWNER)
    return lib, ids


def passages(lib: Library) -> list[tuple[int, str, str]]:
    """(passage id, document name, text)."""
    return lib.db.execute("SELECT p.id, d.name, p.text FROM passages p JOIN documents d ON d.id = p.doc_id").fetchall()


class Trigram:
    def __init__(self, lib: Library, normalized: bool):
        self.db, self.normalized = lib.db, normalized
        self.table = "tri_norm" if normalized else "tri_raw"
        self.db.execute(f"CREATE VIRTUAL TABLE {self.table} USING fts5(text, tokenize = 'trigram')")
        for pid, _, text in passages(lib):
            self.db.execute(f"INSERT INTO {self.table}(rowid, text) VALUES (?, ?)", (pid, normalize(text) if normalized else text))

    def search(self, query: str, k: int) -> list[int]:
        q = normalize(query) if self.normalized else query
        grams = dict.fromkeys(t[i:i + 3] for t in re.findall(r"[^\s\W_]+|[^\x00-\x7f\s\W]+", q) for i in range(len(t) - 2))
        if not grams:
            return []
        expr = " OR ".join('"' + g.replace('"', '""') + '"' for g in grams)
        rows = self.db.execute(f"SELECT rowid FROM {self.table} WHERE {self.table} MATCH ? ORDER BY bm25({self.table}) LIMIT ?",
                               (expr, k)).fetchall()
        return [r[0] for r in rows]


def evaluate(rank_fn, questions, relevant) -> dict[str, dict[str, float]]:
    per_q = {}
    for q in questions:
        ranked = rank_fn(q["query"], DEPTH)
        first = next((i + 1 for i, pid in enumerate(ranked) if pid in relevant[q["id"]]), None)
        per_q[q["id"]] = first
    subsets = {"all": questions}
    for tag in ("two_char", "simplified", "cross_lingual"):
        subsets[tag] = [q for q in questions if tag in q["tags"]]
    for lang in ("zh-hant", "yue", "en"):
        subsets[f"{lang} (same-language)"] = [q for q in questions if q["lang"] == lang and not q["tags"]]
    out = {}
    for name, qs in subsets.items():
        if not qs:
            continue
        ranks = [per_q[q["id"]] for q in qs]
        row = {f"R@{k}": sum(1 for r in ranks if r and r <= k) / len(qs) for k in KS}
        row["MRR"] = sum(1 / r for r in ranks if r) / len(qs)
        row["n"] = len(qs)
        out[name] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    lib, _ = load_library()
    build_s = time.perf_counter() - t0
    all_passages = passages(lib)
    questions = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    relevant = {q["id"]: {pid for pid, name, text in all_passages if name == q["doc"] and verify_quote(q["answer"], text)}
                for q in questions}
    missing = [q["id"] for q in questions if not relevant[q["id"]]]
    if missing:
        print(f"questions whose answer is in no passage (fix the question set): {missing}", file=sys.stderr)
        return 1

    systems = {
        "hkllm bigram": lambda query, k: [h.id for h in lib.search(query, owner=OWNER, k=k)],
    }
    translations = {q["query"]: q["translation"] for q in questions if q.get("translation")}
    systems["hkllm bigram + translated query"] = lambda query, k: [
        h.id for h in lib.search(query, owner=OWNER, k=k, also=[translations[query]] if query in translations else [])]
    tri, tri_norm = Trigram(lib, False), Trigram(lib, True)
    systems["fts5 trigram"] = tri.search
    systems["fts5 trigram + HK norm"] = tri_norm.search
    results, timing = {}, {}
    for name, fn in systems.items():
        t = time.perf_counter()
        results[name] = evaluate(fn, questions, relevant)
        timing[name] = (time.perf_counter() - t) / len(questions) * 1000

    n_docs = len({name for _, name, _ in all_passages})
    if args.json:
        print(json.dumps({"documents": n_docs, "passages": len(all_passages), "questions": len(questions),
                          "results": results, "ms_per_query": timing}, ensure_ascii=False, indent=1))
        return 0
    print(f"{n_docs} documents, {len(all_passages)} passages, {len(questions)} questions "
          f"(index built in {build_s:.1f} s)\n")
    print("| system | subset | n | R@1 | R@3 | R@5 | MRR@10 |")
    print("|---|---|---|---|---|---|---|")
    for subset in results["hkllm bigram"]:
        for name in systems:
            r = results[name][subset]
            print(f"| {name} | {subset} | {r['n']} | {r['R@1']:.2f} | {r['R@3']:.2f} | {r['R@5']:.2f} | {r['MRR']:.2f} |")
    print("\nms/query: " + ", ".join(f"{n} {ms:.1f}" for n, ms in timing.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
