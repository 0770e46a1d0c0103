"""Run an evaluation suite and write results.json, samples.jsonl, report.md and plots.

    hkllm eval runs/quickstart/dpo --suite recipes/eval/hk_suite.yaml --out runs/quickstart/eval/dpo
    hkllm eval --base-url http://127.0.0.1:8000/v1 --suite recipes/eval/hk_suite.yaml --out runs/eval/served
    hkllm eval --backend lm-eval --base-url http://127.0.0.1:8000/v1 --tokenizer runs/quickstart/dpo \\
        --tasks hk_knowledge_mc --out runs/eval/lm-eval

Paths in a suite are relative to the current directory, as in training recipes. Each task
writes its samples as it finishes, and a finished run is not redone unless --force is given.
A suite is checked when it is loaded (hkllm/config.py): task names, and each task's options by
TASK_OPTIONS, so that `max_tokens: abc` or `knowledge: {pth: ...}` fails before any model runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from hkllm import config
from hkllm.errors import UserError
from hkllm.eval import tasks as T
from hkllm.files import write_atomic

Sources = list[str | dict]    # as in training recipes: a path, or {path, variety, split, max_chars}


def _options(task: str, required: dict, **optional) -> type:
    """A task's options as a dataclass for config.validate. An option left out is not filled in:
    each task function states its own default (`cfg.get("max_tokens", 48)`)."""
    return dataclasses.make_dataclass(f"{task}_options", [*required.items(), *((k, t | None, None)
                                                                               for k, t in optional.items())])


# What each task in a suite may set (tasks.py reads them); a task not listed here is not checked.
TASK_OPTIONS = {
    "lm": _options("lm", {"sources": Sources}, max_docs=int, max_chars=int),
    "knowledge": _options("knowledge", {"path": str}, open_ended=bool, max_tokens=int),
    "fidelity": _options("fidelity", {"path": str}, max_tokens=int),
    "translation": _options("translation", {"path": str}, max_tokens=int),
    "consistency": _options("consistency", {"path": str}, probes=int, k=int, max_tokens=int),
    "safety": _options("safety", {"path": str}, policy=str, max_tokens=int),
    "chat": _options("chat", {"sources": list[dict]}, max_tokens=int),   # sources: {name, path, field}
    "watermark": _options("watermark", {}, path=str, sources=Sources, prompts=int, max_tokens=int, max_docs=int,
                          chunk_tokens=int, key_seed=int, alpha=float),
    "moderation": _options("moderation", {}, path=str, policy=str, split=str),
}
EXTERNAL_OPTIONS = _options("external", {"name": str}, data_dir=str, limit=int, max_tokens=int)


@dataclass
class Suite:
    tasks: dict[str, dict | None] = field(default_factory=dict)   # task name -> its options (TASK_OPTIONS)
    external: list[dict] = field(default_factory=list)            # benchmarks on disk (hkllm/eval/external.py)


def load_suite(path: str | Path) -> dict:
    """{"tasks": {name: options}, "external": [options]}, every task name and option checked."""
    path = Path(path)
    suite = config.load(path, Suite, what="suite field", missing="suite")
    unknown = set(suite.tasks) - set(T.TASKS)
    if unknown:
        import difflib
        hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, T.TASKS, 1)) else u
                 for u in sorted(unknown)]
        raise UserError(f"{path}: unknown task(s) {', '.join(hints)}; built-in tasks: {', '.join(T.TASKS)}")
    tasks = {name: _checked(TASK_OPTIONS.get(name), cfg, path, f"tasks.{name}") for name, cfg in suite.tasks.items()}
    external = [_checked(EXTERNAL_OPTIONS, cfg, path, f"external[{i}]") for i, cfg in enumerate(suite.external)]
    return {"tasks": tasks, "external": external}


def write_suite(source: Path, dest: Path, retarget, smoke_options: dict | None = None, command: str = "hkllm") -> Path:
    """The suite `source` for one run, written to `dest`: each task's path, policy and sources
    passed through `retarget` (e.g. into the run's --out) and, for a smoke run, each task shrunk
    by those of `smoke_options` it takes."""
    import yaml

    from hkllm import assets

    suite = load_suite(source)
    for name, cfg in suite["tasks"].items():
        for key in ("path", "policy", "sources"):
            if key in cfg:
                cfg[key] = retarget(cfg[key])
        if smoke_options:
            cfg.update({k: v for k, v in smoke_options.items() if k in config.fields(TASK_OPTIONS[name])})
    shown = source.relative_to(assets.ROOT) if source.is_relative_to(assets.ROOT) else source
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, f"# written by {command} from {shown}\n" + yaml.safe_dump(suite, allow_unicode=True, sort_keys=False))
    return dest


def _checked(options, cfg: dict | None, path: Path, where: str) -> dict:
    cfg = cfg or {}
    return config.validate(options, cfg, path, where, what="option") if options else cfg


def evaluate(model, suite_path: str | Path, out: str | Path, previous: str | Path | None = None,
             data_dir: str | Path | None = None, force: bool = False, progress=print) -> dict:
    suite, out = load_suite(suite_path), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics, samples = {}, []
    jobs = [(name, T.TASKS[name], cfg or {}) for name, cfg in suite.get("tasks", {}).items()]
    for ext in suite.get("external", []) or []:
        if not data_dir and not ext.get("data_dir"):
            raise UserError(f"{suite_path}: external benchmark {ext.get('name')} needs --data-dir (nothing is downloaded)")
        jobs.append((f"external.{ext['name']}", T.external, {"data_dir": data_dir, **ext}))
    (out / "_tasks").mkdir(exist_ok=True)
    loads = {}  # external benchmark -> what its files gave: items, malformed records skipped (and which)
    for name, fn, cfg in jobs:
        start = time.perf_counter()
        done = out / "_tasks" / f"{name}.json"
        stamp = {"model_version": model.version, "cfg": json.loads(json.dumps(cfg, default=str))}
        cached = json.loads(done.read_text(encoding="utf-8")) if done.exists() and not force else None
        if cached and cached["stamp"] == stamp:
            m, s, load = cached["metrics"], cached["samples"], cached.get("load")
        else:
            load = _external_load(cfg) if fn is T.external else None
            m, s = fn(model, cfg)
            write_atomic(done, json.dumps({"stamp": stamp, "metrics": m, "samples": s, "load": load}, ensure_ascii=False))
        if load:
            loads[cfg["name"]] = load
            if load["skipped_records"] or load["skipped_files"] or load["left_out"]:
                progress(f"  {load['summary']}")
        metrics.update(m)
        samples += s
        progress(f"  {name}: {len(s)} items {'(kept from an earlier run)' if cached and cached['stamp'] == stamp else ''}"
                 f"in {time.perf_counter() - start:.1f} s")
    if previous:
        prev = Path(previous) / "samples.jsonl"
        if not prev.exists():
            raise UserError(f"--previous {previous}: no samples.jsonl there")
        metrics.update(T.version_flips(samples, T.read_jsonl(prev, ("task", "id"))))
    results = {"model": model.name, "model_version": model.version, "suite": str(suite_path),
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "metrics": metrics}
    if loads:
        results["external"] = loads
    write_atomic(out / "samples.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    write_atomic(out / "results.json", json.dumps(results, ensure_ascii=False, indent=1))
    write_atomic(out / "report.md", report(results))
    plot(results, out)
    return results


def _external_load(cfg: dict) -> dict:
    """What an external benchmark's files gave (items, and the malformed records skipped), for results.json."""
    from hkllm.eval.external import load_external_report
    return load_external_report(cfg["name"], cfg["data_dir"])[1].to_dict()


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def report(results: dict) -> str:
    lines = [f"# Evaluation of {results['model']} ({results['model_version']})", "",
             f"Suite `{results['suite']}`, {results['created']}. Intervals are 95% (Wilson for rates, bootstrap "
             "over items otherwise).", "", "| metric | value | 95% CI | n |", "|---|---:|---|---:|"]
    for name, m in sorted(results["metrics"].items()):
        ci = f"{_fmt(m.get('ci_low'))} – {_fmt(m.get('ci_high'))}" if m.get("ci_low") is not None else "—"
        lines.append(f"| {name} | {_fmt(m['value'])} | {ci} | {m.get('n', '')} |")
    for name, load in sorted(results.get("external", {}).items()):
        lines += ["", f"External benchmark `{name}` ({load['root']}): {load['loaded']:,} items from {load['files']} "
                      f"file(s), {load['skipped_records']:,} malformed record(s) and {load['skipped_files']} file(s) "
                      "skipped" + (f", first {len(load['skipped_examples'])}:" if load["skipped_examples"] else ".")]
        lines += [f"- `{e['where']}`: {e['error']}" for e in load["skipped_examples"]]
        lines += [f"- left out {x}" for x in load["left_out"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path) -> None:
    """rates.png: every rate with its interval; bpb.png: bits-per-byte per variety."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {"rates.png": [(k, v) for k, v in sorted(results["metrics"].items())
                            if not k.startswith(("lm.", "translation.", "consistency.repeat.max"))
                            and v.get("ci_low") is not None and "." in k[k.find(".") + 1:]],
              "bpb.png": [(k, v) for k, v in sorted(results["metrics"].items()) if k.startswith("lm.bpb.")]}
    for name, rows in groups.items():
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
        values = [v["value"] for _, v in rows]
        err = [[v["value"] - (v["ci_low"] if v.get("ci_low") is not None else v["value"]) for _, v in rows],
               [(v["ci_high"] if v.get("ci_high") is not None else v["value"]) - v["value"] for _, v in rows]]
        ax.barh([k for k, _ in rows], values, xerr=err, color="#3b7dd8", capsize=2)
        ax.invert_yaxis()
        ax.set_title(f"{results['model']}: {'bits per byte (lower is better)' if name == 'bpb.png' else 'rates, 95% CI'}")
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def evaluate_lm_eval(base_url: str, model: str | None, tokenizer: str, task_names: list[str], out: str | Path,
                     include_path: str | None = None, limit: int | None = None, api_key: str = "none") -> dict:
    """Run lm-evaluation-harness's `local-completions` against a served model."""
    import os

    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise UserError("--backend lm-eval needs lm-evaluation-harness: pip install 'lm-eval[api]'") from e
    from openai import OpenAI

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model or OpenAI(base_url=base_url, api_key=api_key).models.list().data[0].id
    os.environ.setdefault("OPENAI_API_KEY", api_key)
    from hkllm.eval.lm_eval_tasks import FOLDER

    paths = [str(FOLDER)] + ([include_path] if include_path else [])
    res = lm_eval.simple_evaluate(
        model="local-completions", tasks=task_names, limit=limit, log_samples=True,
        model_args={"base_url": base_url.rstrip("/") + "/completions", "model": model, "tokenizer": tokenizer,
                    "tokenizer_backend": "huggingface", "num_concurrent": 4, "max_retries": 2},
        task_manager=TaskManager(include_path=paths))
    metrics, samples = {}, []
    for task, values in res["results"].items():
        for key, value in values.items():
            if not isinstance(value, (int, float)) or "_stderr" in key:
                continue
            metric = key.split(",")[0]
            stderr = values.get(f"{metric}_stderr,{key.split(',')[1]}") if "," in key else None
            ci = (value - 1.96 * stderr, value + 1.96 * stderr) if isinstance(stderr, float) else (None, None)
            metrics[f"lm_eval.{task}.{metric}"] = {"value": float(value), "ci_low": ci[0], "ci_high": ci[1],
                                                   "n": len(res["samples"].get(task, []))}
    for task, rows in res.get("samples", {}).items():
        for r in rows:
            samples.append({"task": f"lm_eval.{task}", "id": f"{task}-{r['doc_id']}", "prompt": str(r["arguments"][0][0])[:200],
                            "output": str(r.get("filtered_resps"))[:200],
                            "score": float(next((r[m] for m in ("acc", "exact_match") if m in r), 0.0))})
    results = {"model": model, "model_version": model, "suite": f"lm-eval:{','.join(task_names)}",
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "metrics": metrics}
    write_atomic(out / "samples.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    write_atomic(out / "results.json", json.dumps(results, ensure_ascii=False, indent=1))
    write_atomic(out / "report.md", report(results))
    return results
