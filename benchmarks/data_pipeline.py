"""Throughput of `hkllm data build` vs a bare datatrove reader → MinHash → writer, same input.

    .venv/bin/python benchmarks/data_pipeline.py [--mb 50] [--workers 2]

Generates a corpus of at least --mb megabytes (UTF-8) of mixed Cantonese (CTCPC sentences),
Standard Written Chinese (the demo documents, re-sampled) and English (Python's docs), with 5%
exact duplicates, 5% near duplicates and some phone numbers and e-mails, as JSONL shards. Then,
in the same run:
  1. hkllm's full pipeline (normalize → detect → redact → quality → exact dedup → MinHash →
     decontaminate → split → mix) on it;
  2. a bare datatrove JsonlReader → MinHash (4 stages, same character n-grams) → JsonlWriter.
Prints MB/s and docs/s of both, their ratio, the seconds spent in each step, and the ratio of
the Hong Kong steps' time to the MinHash dedup's time (target: below 1).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from importlib.resources import files
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def generate(folder: Path, megabytes: float, shards: int, seed: int = 0) -> tuple[int, int]:
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    yue = [s.strip() for s in json.loads(files("pycantonese").joinpath("data/ctcpc/sents.json").read_text("utf-8"))
           if len(s.strip()) > 6]
    swc = [p for f in sorted((REPO / "data" / "demo" / "docs").glob("*zh-hant*")) for p in
           f.read_text("utf-8").replace("。", "。\n").splitlines() if len(p.strip()) > 6]
    en = [p for t in topics.values() for p in t.replace(". ", ".\n").splitlines() if len(p.strip()) > 20]
    pools = [(yue, "", 0.5), (swc, "", 0.25), (en, " ", 0.25)]
    folder.mkdir(parents=True, exist_ok=True)
    outs = [open(folder / f"{i:03d}.jsonl", "w", encoding="utf-8") for i in range(shards)]
    size, n, recent = 0, 0, []
    while size < megabytes * 1e6:
        r = rng.random()
        if recent and r < 0.05:
            text = rng.choice(recent)                                    # exact duplicate
        elif recent and r < 0.10:
            base = rng.choice(recent)
            i = rng.randrange(len(base))
            text = base[:i] + "，" + base[i + 1:]                          # near duplicate
        else:
            pool, sep, _ = rng.choices(pools, weights=[w for *_, w in pools])[0]
            text = sep.join(rng.choice(pool) for _ in range(rng.randint(10, 40)))
            if rng.random() < 0.1:
                text += f" 查詢電話 {rng.choice('2356')}{rng.randrange(10**6, 10**7)} 或電郵 user{n}@example.hk"
        recent = (recent + [text])[-200:]
        line = json.dumps({"text": text, "id": str(n)}, ensure_ascii=False) + "\n"
        outs[n % shards].write(line)
        size += len(line.encode())
        n += 1
    for f in outs:
        f.close()
    return n, size


def step_seconds(logs: Path) -> dict[str, float]:
    from hkllm.data.card import merged_stats

    seconds: dict[str, float] = {}
    for stage in sorted(p.name for p in logs.iterdir() if p.is_dir()):
        for step in merged_stats(logs / stage):
            seconds[f"{stage}: {step['name']}"] = seconds.get(f"{stage}: {step['name']}", 0.0) + step["seconds"]
    return seconds


def run_hkllm(corpus: Path, out: Path, workers: int) -> float:
    from hkllm.data.build import build
    from hkllm.data.recipe import load_recipe

    recipe_path = out.parent / "bench_recipe.yaml"
    recipe_path.write_text(
        f"name: bench\nworkers: {workers}\nsources:\n  - {{name: corpus, type: jsonl, path: {corpus}, license: mixed}}\n"
        f"steps:\n  decontaminate: [{REPO / 'data' / 'eval' / 'hk_knowledge.jsonl'}]\n  heldout: 0.02\n", encoding="utf-8")
    start = time.perf_counter()
    build(load_recipe(recipe_path), out, progress=False)
    return time.perf_counter() - start


def run_bare(corpus: Path, out: Path, workers: int) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from hkllm.data.build import _stderr_to
    from hkllm.data.steps import MixedScriptTokenizer

    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    tasks = len(list(corpus.glob("*.jsonl")))
    reader = lambda: JsonlReader(str(corpus), compression=None)  # noqa: E731
    stages = [
        (tasks, [reader(), MinhashDedupSignature(str(out / "sigs"), config=config, language=MixedScriptTokenizer())]),
        (config.num_buckets, [MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"), config=config)]),
        (1, [MinhashDedupCluster(str(out / "buckets"), str(out / "remove_ids"), config=config)]),
        (tasks, [reader(), MinhashDedupFilter(str(out / "remove_ids")), JsonlWriter(str(out / "output"), compression=None)]),
    ]
    start = time.perf_counter()
    with _stderr_to(out / "datatrove.log"):
        for i, (n, pipeline) in enumerate(stages):
            LocalPipelineExecutor(pipeline, tasks=n, workers=min(workers, n), logging_dir=str(out / "logs" / f"stage{i}")).run()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50, help="corpus size in MB (default 50)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hkllm-bench-"))
    try:
        docs, size = generate(tmp / "corpus", args.mb, shards=4 * args.workers)
        mb = size / 1e6
        print(f"corpus: {docs:,} documents, {mb:.1f} MB in {tmp / 'corpus'}")
        t_hk = run_hkllm(tmp / "corpus", tmp / "hkllm", args.workers)
        t_bare = run_bare(tmp / "corpus", tmp / "bare", args.workers)
        print("\n| pipeline | seconds | MB/s | docs/s |\n|---|---:|---:|---:|")
        for name, t in (("hkllm data build (all steps)", t_hk), ("bare datatrove reader → MinHash → writer", t_bare)):
            print(f"| {name} | {t:.1f} | {mb / t:.2f} | {docs / t:,.0f} |")
        print(f"\nratio hkllm / bare (wall time): {t_hk / t_bare:.2f}")

        seconds = step_seconds(tmp / "hkllm" / "_work" / "logs")
        print("\n| step (hkllm) | CPU-seconds in step | MB/s per core |\n|---|---:|---:|")
        for name, s in seconds.items():
            if s > 0:
                print(f"| {name} | {s:.2f} | {mb / s:.1f} |")
        hk_steps = sum(s for k, s in seconds.items() if k.split(": ")[1] in ("normalize", "detect variety", "redact", "quality"))
        minhash = sum(s for k, s in seconds.items() if "MinHash" in k)
        print(f"\nHong Kong steps (normalize + detect + redact + quality): {hk_steps:.2f} s")
        print(f"MinHash dedup (4 stages):                               {minhash:.2f} s")
        print(f"ratio Hong Kong steps / MinHash: {hk_steps / minhash:.2f} (target < 1)")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
