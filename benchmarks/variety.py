"""Variety detection: hkllm vs canto-filter vs cantonesedetect on one labeled set.

    .venv/bin/python benchmarks/variety.py [--per-corpus 1000]

Labeled set: `yue` = held-out CTCPC and HKCanCor sentences (a hash-selected slice, at least 4
Chinese characters each) plus the Cantonese lines of benchmarks/data/variety_test.tsv (code-mixed
lines written for hkllm, and CTCPC sentences outside the slice that use 晒 試下 出便 一便 半條命);
`zh-hant`, `zh-hans`, `en`, `other` = the sentences written for hkllm in that file (>= 220 each),
plus real Standard Written Chinese from Hong Kong sources (the Basic Law, government press releases,
Observatory forecasts, LegCo papers and legislation, the Privacy Commissioner) and a few Simplified
lines that use 晒. The file is `label<TAB>text`; a line starting with `#` names the source of the
lines below it.
The two baselines only tell Cantonese from the rest, so for them only the `yue` row is scored
(their label "cantonese" counts as yue), plus how many Standard Written Chinese sentences they
call Cantonese.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from importlib.resources import files
from pathlib import Path

from hkllm.files import stable_hash
from hkllm.text import VARIETIES, detect

HERE = Path(__file__).resolve().parent


def heldout_cantonese(per_corpus: int) -> list[str]:
    import pycantonese

    def pick(sentences, tag):
        keep = [s for s in sentences if len(re.findall(r"[\u4e00-\u9fff]", s)) >= 4]
        keep = [s for s in keep if stable_hash(f"variety-bench:{tag}:{s}") % 10 == 7]  # a fixed 10% slice
        return keep[:per_corpus]

    ctcpc = json.loads(files("pycantonese").joinpath("data/ctcpc/sents.json").read_text("utf-8"))
    hkcancor = ["".join(t.word for t in u.tokens) for u in pycantonese.hkcancor().utterances()]
    return pick([s.strip() for s in ctcpc], "ctcpc") + pick(hkcancor, "hkcancor")


def load_set(per_corpus: int) -> list[tuple[str, str]]:
    lines = (HERE / "data" / "variety_test.tsv").read_text("utf-8").splitlines()
    rows = [line.split("\t", 1) for line in lines if line and not line.startswith("#")]
    return [(label, text) for label, text in rows] + [("yue", s) for s in heldout_cantonese(per_corpus)]


def precision_recall(gold: list[str], pred: list[str], cls: str) -> tuple[float, float, int]:
    tp = sum(g == cls and p == cls for g, p in zip(gold, pred))
    predicted, actual = sum(p == cls for p in pred), sum(g == cls for g in gold)
    return (tp / predicted if predicted else 0.0), (tp / actual if actual else 0.0), actual


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-corpus", type=int, default=1000, help="held-out sentences from each of CTCPC and HKCanCor")
    args = ap.parse_args()

    import cantofilter
    from cantonesedetect.Detector import CantoneseDetector

    data = load_set(args.per_corpus)
    gold = [label for label, _ in data]
    texts = [text for _, text in data]
    detector = CantoneseDetector()
    systems = {
        "hkllm": [detect(t).variety for t in texts],
        "canto-filter": ["yue" if str(cantofilter.judge(t)) == "cantonese" else "-" for t in texts],
        "cantonesedetect": ["yue" if str(detector.judge(t)) == "cantonese" else "-" for t in texts],
    }
    print(f"labeled set: {len(data)} items {dict(Counter(gold))}\n")
    print("| system | class | n | precision | recall |\n|---|---|---:|---:|---:|")
    for name, pred in systems.items():
        for cls in (VARIETIES if name == "hkllm" else ("yue",)):
            p, r, n = precision_recall(gold, pred, cls)
            print(f"| {name} | {cls} | {n} | {p:.3f} | {r:.3f} |")
    swc = [i for i, g in enumerate(gold) if g == "zh-hant"]
    print("\nStandard Written Chinese called Cantonese (target <= 0.5%):")
    for name, pred in systems.items():
        fp = sum(pred[i] == "yue" for i in swc)
        print(f"  {name:16s} {fp}/{len(swc)} = {fp / len(swc):.1%}")
    for i in swc:
        if systems["hkllm"][i] == "yue":
            print(f"    hkllm: {texts[i]}")
    yue = [i for i, g in enumerate(gold) if g == "yue"]
    base = max(sum(systems[b][i] == "yue" for i in yue) for b in ("canto-filter", "cantonesedetect"))
    ours = sum(systems["hkllm"][i] == "yue" for i in yue)
    print(f"\nCantonese recall ratio hkllm / best baseline: {ours / base:.3f} ({ours} vs {base} of {len(yue)})")


if __name__ == "__main__":
    main()
