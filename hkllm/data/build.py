"""`hkllm data build RECIPE.yaml --out DIR`: the localization corpus, as datatrove stages.

    prepare      read sources → normalize → detect variety → redact → quality filters,
                 written to _work/prepared/<partition>/ (partition = hash of the text)
    signatures   exact dedup per partition → MinHash signatures (character n-grams)
    buckets      MinHash buckets                 (datatrove MinhashDedupBuckets)
    clusters     duplicate clusters              (datatrove MinhashDedupCluster)
    filter       exact dedup → near-dedup → decontamination → train/held-out split
    mix          sample train documents to the recipe's shares (and replay ratio)

Outputs in DIR: train/*.jsonl, heldout/*.jsonl (each line: text, id, metadata with source,
variety, license), rejects/<step>/ (what each step dropped), datacard.json and datacard.md.

Resumable: each stage task that finished is recorded under _work/logs/<stage>/completions and
skipped when the same recipe is run again; a crash loses only the task that was running.
Datatrove's Slurm and Ray executors run the same stages on a cluster (see README, "Scale").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from hkllm.data.card import merged_stats, write_card
from hkllm.data.recipe import Recipe
from hkllm.errors import UserError
from hkllm.files import stable_hash


@contextlib.contextmanager
def _stderr_to(logfile: Path):
    """Send everything written to fd 2 (datatrove's loguru output, also from worker
    processes) to `logfile`, keeping the terminal for our own progress display."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(logfile, "a") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield os.fdopen(os.dup(saved), "w", buffering=1)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _executor(pipeline, tasks: int, workers: int, logs: Path):
    from datatrove.executor import LocalPipelineExecutor

    return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logs))


def _jsonl_writer(folder: Path, filename: str = "${rank}.jsonl"):
    from datatrove.pipeline.writers import JsonlWriter

    return JsonlWriter(str(folder), output_filename=filename, compression=None)


def _jsonl_reader(folder: Path):
    from datatrove.pipeline.readers import JsonlReader

    return JsonlReader(str(folder), compression=None, glob_pattern="*.jsonl")


class PartitionReader:
    """Task r reads _work/prepared/r/*.jsonl: the documents whose text hash falls in partition r."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, data=None, rank: int = 0, world_size: int = 1):
        partition = self.folder / f"{rank:05d}"
        if not partition.exists():  # no document hashed into this partition
            return iter(())
        return _jsonl_reader(partition)(data, 0, 1)


class PartitionTag:
    """Tag each document with its text hash and partition for the dedup stages."""

    def __init__(self, partitions: int):
        self.partitions = partitions

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            h = stable_hash(" ".join(doc.text.split()))
            doc.metadata["text_hash"] = h
            doc.metadata["part"] = f"{h % self.partitions:05d}"
            yield doc


def _step_stats(logs: Path, name: str) -> Counter:
    return sum((s["stats"] for s in merged_stats(logs) if s["name"] == name), Counter())


def _check_fingerprint(recipe: Recipe, out: Path, force: bool) -> None:
    marker = out / "_work" / "recipe.json"
    fingerprint = recipe.fingerprint()
    if force and out.exists():
        shutil.rmtree(out)
    elif marker.exists():
        if json.loads(marker.read_text()).get("fingerprint") != fingerprint:
            raise UserError(
                f"{out} was built from a different recipe (or version of it). Use another --out, "
                f"or --force to delete it and rebuild. / 輸出目錄由另一份配方建立；請改用新目錄或加 --force。"
            )
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not an hkllm data build; choose an empty or new --out (or --force)")
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "recipe": str(recipe.file)}))
    tmp.replace(marker)


def _stage_failure(name: str, e: Exception, log: Path) -> str:
    """The message for a stage that raised something other than a UserError.

    Only a failure of the machine (a full disk, a lost file, memory) is worth running again;
    anything else comes from the data or from hkllm and would fail the same way on a re-run."""
    if isinstance(e, (OSError, MemoryError)):
        return (f"stage '{name}' failed: {type(e).__name__}: {e} (details: {log}); once the cause is fixed, "
                f"re-run the same command to resume / 修正後重新執行即可續做")
    return (f"stage '{name}' failed: {type(e).__name__}: {e} (details: {log}). Running it again will fail the same "
            f"way: it is an input hkllm does not handle, or a bug — please report it with that log / 請附上記錄回報")


def build(recipe: Recipe, out: Path, force: bool = False, progress: bool = True) -> dict:
    """Run (or resume) the build; return the data card."""
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from tqdm import tqdm

    from hkllm.data.readers import make_reader
    from hkllm.data.steps import (
        Decontaminate,
        DetectVariety,
        ExactDedup,
        MixedScriptTokenizer,
        MixSampler,
        Normalize,
        QualityFilter,
        Redact,
        Split,
        load_eval_texts,
        mix_rates,
    )

    out = Path(out)
    _check_fingerprint(recipe, out, force)
    work, rejects, logs = out / "_work", out / "rejects", out / "_work" / "logs"
    steps, parts, workers = recipe.steps, recipe.workers, recipe.workers
    mh = steps.minhash
    mh_config = MinhashConfig(n_grams=mh.ngram, num_buckets=mh.buckets, hashes_per_bucket=mh.hashes_per_bucket) if mh else None
    started = time.time()

    def rejects_writer(step: str):
        return _jsonl_writer(rejects / step)

    def stage_pipelines():
        yield "prepare", parts, [
            *(make_reader(s, recipe, str(rejects)) for s in recipe.sources),
            Normalize(hk_forms=steps.hk_forms),
            DetectVariety(),
            *([Redact()] if steps.redact else []),
            QualityFilter(steps.quality, exclusion_writer=rejects_writer("quality")),
            PartitionTag(parts),
            _jsonl_writer(work / "prepared", "${part}/${rank}.jsonl"),
        ]
        if mh:
            yield "signatures", parts, [
                PartitionReader(work / "prepared"),
                *([ExactDedup(exclusion_writer=rejects_writer("exact_dedup"))] if steps.exact_dedup else []),
                MinhashDedupSignature(str(work / "minhash" / "sigs"), config=mh_config, language=MixedScriptTokenizer()),
            ]
            yield "buckets", mh.buckets, [
                MinhashDedupBuckets(str(work / "minhash" / "sigs"), str(work / "minhash" / "buckets"), config=mh_config)
            ]
            yield "clusters", 1, [
                MinhashDedupCluster(str(work / "minhash" / "buckets"), str(work / "minhash" / "remove_ids"), config=mh_config)
            ]
        eval_texts = load_eval_texts([recipe.resolve(p) for p in steps.decontaminate])
        yield "filter", parts, [
            PartitionReader(work / "prepared"),
            # Without MinHash this is where exact dedup is counted; with it, the same
            # (deterministic) filter replays the signature stage's choice so indices line up.
            *([ExactDedup(exclusion_writer=None if mh else rejects_writer("exact_dedup"))] if steps.exact_dedup else []),
            *([MinhashDedupFilter(str(work / "minhash" / "remove_ids"), exclusion_writer=rejects_writer("near_dedup"))] if mh else []),
            Decontaminate(eval_texts, n=steps.decontaminate_ngram, exclusion_writer=rejects_writer("decontaminate")),
            Split(steps.heldout, recipe.mix.by),
            _jsonl_writer(work / "split", "${split}/${rank}.jsonl"),
        ]
        chars = {k[len("chars_"):]: v for k, v in _step_stats(logs / "filter", "split").items() if k.startswith("chars_")}
        rates = mix_rates(chars, recipe.mix.shares, recipe.mix.replay, recipe.mix.max_repeat)
        (work / "mix_rates.json").write_text(json.dumps({"chars_before": chars, "rates": rates}, indent=1))
        train_files = len(list((work / "split" / "train").glob("*.jsonl")))
        yield "mix", max(train_files, 1), [
            _jsonl_reader(work / "split" / "train"),
            MixSampler(rates, recipe.mix.by, seed=recipe.mix.seed),
            _jsonl_writer(out / "train"),
        ]

    n_stages = 3 + (3 if mh else 0)
    with _stderr_to(work / "datatrove.log") as terminal:
        bar = tqdm(total=n_stages, desc="data build", unit="stage", file=terminal, disable=not progress,
                   bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar}| {elapsed}")
        for name, tasks, pipeline in stage_pipelines():
            bar.set_description(f"data build [{name}]")
            try:
                _executor(pipeline, tasks, workers, logs / name).run()
            except UserError:
                raise
            except Exception as e:
                raise UserError(_stage_failure(name, e, work / "datatrove.log")) from e
            bar.update(1)
        bar.close()

    # Held-out shards move into place only now, so DIR/heldout never holds a half-written file.
    heldout_dir = out / "heldout"
    heldout_dir.mkdir(exist_ok=True)
    for f in sorted((work / "split" / "heldout").glob("*.jsonl")):
        tmp = heldout_dir / (f.name + ".tmp")
        shutil.copyfile(f, tmp)
        tmp.replace(heldout_dir / f.name)
    return write_card(recipe, out, logs, time.time() - started)
