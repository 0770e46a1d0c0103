"""Evaluation speed: multiple-choice items per second scored in-process vs through
lm-evaluation-harness (`local-completions`) against `hkllm serve`, same model, same items.

    .venv/bin/python benchmarks/eval_speed.py [--model runs/quickstart/dpo]

Items: the 90 questions of data/eval/hk_knowledge.jsonl (4 choices each), with the Chinese
prompt template for all of them on both paths (lm-eval's task hk_knowledge_mc). Both paths
must agree on every item's correctness; the script checks it and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from servers import REPO, check_model, free_port, hkllm_serve

from hkllm.eval.backends import LocalBackend
from hkllm.eval.run import evaluate_lm_eval
from hkllm.eval.tasks import multiple_choice, read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "runs/quickstart/dpo")
    args = ap.parse_args()
    model = check_model(args.model.resolve())
    items = read_jsonl(REPO / "data/eval/hk_knowledge.jsonl", ("id", "question", "choices", "answer"))
    for it in items:
        it["lang"] = "zh"
    backend = LocalBackend(model)
    start = time.perf_counter()
    ours = multiple_choice(backend, items, "knowledge.mc")
    in_process = time.perf_counter() - start
    with hkllm_serve(model, free_port(), "--no-cache") as (url, _), tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        evaluate_lm_eval(url, None, str(model), ["hk_knowledge_mc"], out)
        harness = time.perf_counter() - start
        theirs = [json.loads(line) for line in (Path(out) / "samples.jsonl").read_text().splitlines()]
    agree = sum(a["score"] == b["score"] for a, b in zip(ours, theirs))
    print("| path | items | seconds | items/s |\n|---|---:|---:|---:|")
    print(f"| in-process (hkllm eval MODEL) | {len(items)} | {in_process:.2f} | {len(items) / in_process:.1f} |")
    print(f"| lm-eval local-completions → hkllm serve | {len(theirs)} | {harness:.2f} | {len(theirs) / harness:.1f} |")
    print(f"\nin-process / lm-eval speed: {harness / in_process:.1f}×; items scored the same: {agree}/{len(items)}")


if __name__ == "__main__":
    main()
