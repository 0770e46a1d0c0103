"""`hkllm quickstart`: the end-to-end demo on the embedded default, minutes on 2 cores.

    hkllm quickstart --out runs/quickstart

1. data          build the demo corpus (recipes/data/demo.yaml) and print its data card
2. instructions  generate the chat training set (recipes/data/instructions.yaml)
3. base          the tiny general model hkllm ships (data/models/tiny-base, trained from scratch by
                 recipes/tiny/base.yaml in ~10 min; `--train-base` trains it again)
4. cpt           localize it on the chat set and the corpus, with replay (`--compare-replay`: also
                 without, for the gain/forgetting table)
5. sft           chat fine-tuning on the chat set (assistant tokens only), with replay
6. dpo           preference optimisation
7. eval          every model on recipes/eval/hk_suite.yaml, then `hkllm gate` dpo against base
and print the table of Hong Kong gain and general forgetting (bits-per-byte) for the cpt run(s),
the evaluation summary, the gate's verdicts, the time each stage took, and how to serve the model.
Precision is chosen by the hardware (hkllm/precision.py): fp32 on a CPU without native bf16.
A finished stage (its metrics.json exists) is skipped on re-run; an interrupted one resumes
from its last checkpoint. `--smoke` shrinks every stage to seconds (used by the tests);
`--stop-after STAGE` ends the run there.
The recipes and data are the ones shipped with hkllm (hkllm.assets: the checkout, or the
installed wheel), so it runs from any directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from hkllm import assets
from hkllm.files import write_atomic
from hkllm.stage_timer import Timer
from hkllm.train.data import retarget

REPO = assets.ROOT      # where recipes/ and data/ are: the checkout, or hkllm/_assets in a wheel
HK, GENERAL = ("yue", "zh-hant"), ("en", "zh-hans")


def _local(value, out: Path):
    """Recipe paths under runs/quickstart/ point into this run's --out; other relative paths
    (data/general/..., data/eval/...) are hkllm's shipped files."""
    return retarget(value, "runs/quickstart", out)


SHIPPED_BASE = "data/models/tiny-base"
# what a model folder needs to load and train on; the rest of a run folder (checkpoints) is not shipped
_BASE_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja", "recipe.yaml", "train_log.jsonl", "metrics.json")


def shipped_base(out: Path):
    """Copy the shipped base into out/base: the way a real run starts from an open-weight model.
    metrics.json goes last, so an interrupted copy is redone rather than taken for a finished stage."""
    import shutil

    run_dir, source = out / "base", REPO / SHIPPED_BASE
    if (run_dir / "metrics.json").exists():
        print(f"== base: done earlier, skipped ({run_dir}) ==")
        return json.loads((run_dir / "metrics.json").read_text()), True
    print(f"== base: the shipped tiny base {SHIPPED_BASE} (recipes/tiny/base.yaml; --train-base trains it "
          f"again, ~10 min) → {run_dir} / 使用隨附基座模型 ==", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in _BASE_FILES:
        shutil.copyfile(source / name, run_dir / (name + ".tmp"))
        (run_dir / (name + ".tmp")).replace(run_dir / name)
    return json.loads((run_dir / "metrics.json").read_text()), False


def _stage(name: str, recipe_file: str, out: Path, model_path: Path | None, smoke: bool, **fields):
    from hkllm.train.recipe import load

    run_dir = out / name
    if (run_dir / "metrics.json").exists():
        print(f"== {name}: done earlier, skipped ({run_dir}) ==")
        return json.loads((run_dir / "metrics.json").read_text()), True
    recipe = load(REPO / "recipes" / "tiny" / recipe_file)
    recipe.out = str(run_dir)
    if model_path:
        recipe.model.path = str(model_path)
    recipe.eval = _local(recipe.eval, out)
    recipe.data.train = _local(recipe.data.train, out)
    recipe.data.replay = _local(recipe.data.replay, out)
    for key, value in fields.items():
        setattr(recipe.data, key, value)
    if smoke:
        recipe.train.max_steps, recipe.train.batch_size, recipe.train.seq_len = 6, 4, 128
        recipe.model.hidden_size, recipe.model.num_layers, recipe.model.intermediate_size = 64, 2, 256
        recipe.model.vocab_size, recipe.eval_max_chars = 1000, 2000
    print(f"== {name}: hkllm train {recipe.stage} recipes/tiny/{recipe_file} → {run_dir} ==", flush=True)
    from hkllm.train import runner

    return runner(recipe.stage)(recipe, f"hkllm quickstart ({name})"), False


def gain_forgetting_table(runs: dict[str, dict]) -> str:
    """Hong Kong gain = bpb before − after on yue, zh-hant (higher is better); general
    forgetting = bpb after − before on en, zh-hans (lower is better)."""
    lines = ["| run | replay | " + " | ".join(f"{v} before → after" for v in HK + GENERAL) + " | HK gain | general forgetting |",
             "|---|---:|" + "---:|" * (len(HK) + len(GENERAL)) + "---:|---:|"]
    for name, m in runs.items():
        b, a = m["bpb_before"], m["bpb_after"]
        cells = [f"{b[v]:.3f} → {a[v]:.3f}" if v in b else "—" for v in HK + GENERAL]
        gain = sum(b[v] - a[v] for v in HK if v in b) / max(1, sum(v in b for v in HK))
        forget = sum(a[v] - b[v] for v in GENERAL if v in b) / max(1, sum(v in b for v in GENERAL))
        lines.append(f"| {name} | {m['replay_share']:.0%} | " + " | ".join(cells) + f" | {gain:+.3f} | {forget:+.3f} |")
    return "\n".join(lines)


SUMMARY = ["lm.bpb.hk", "lm.bpb.general", "knowledge.mc.acc", "knowledge.open.acc", "knowledge.open.parse_failure_rate",
           "fidelity.cantonese_rate", "fidelity.simplified_leak_rate", "translation.chrf", "consistency.paraphrase",
           "consistency.repeat.max_distinct", "safety.refusal_rate", "safety.over_refusal_rate",
           "chat.degenerate_rate", "chat.loop_rate", "watermark.detect_rate", "watermark.false_positive_rate", "moderation.recall.worst"]


SMOKE_OPTIONS = {"max_tokens": 4, "max_docs": 8, "probes": 2, "k": 2}


def _suite(out: Path, smoke: bool) -> Path:
    """recipes/eval/hk_suite.yaml with its paths made absolute and pointed at this run's corpus."""
    from hkllm.eval.run import write_suite

    return write_suite(REPO / "recipes" / "eval" / "hk_suite.yaml", out / "eval" / "suite.yaml",
                       lambda value: _local(value, out), SMOKE_OPTIONS if smoke else None, "hkllm quickstart")


def evaluate_and_gate(out: Path, smoke: bool) -> tuple[str, str]:
    """Evaluate base → cpt → sft → dpo (each against the one before for version flips), then gate
    dpo against base. Returns the summary table and the gate table."""
    from hkllm.eval import gate
    from hkllm.eval.backends import LocalBackend
    from hkllm.eval.run import evaluate

    suite, results, previous = _suite(out, smoke), {}, None
    for name in ("base", "cpt", "sft", "dpo"):
        print(f"== eval: hkllm eval {out / name} --suite {suite} --out {out / 'eval' / name} ==", flush=True)
        backend = LocalBackend(out / name)
        results[name] = evaluate(backend, suite, out / "eval" / name, previous=previous)
        backend.engine.close()            # one model in memory at a time
        previous = out / "eval" / name
    lines = ["| metric | " + " | ".join(results) + " |", "|---|" + "---:|" * len(results)]
    for metric in SUMMARY:
        cells = [f"{r['metrics'][metric]['value']:.3f}" if metric in r["metrics"] else "—" for r in results.values()]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    summary = "\n".join(lines)
    (out / "eval" / "summary.md").write_text(summary + "\n", encoding="utf-8")
    policy = gate.load_policy(REPO / "recipes" / "eval" / "gate.yaml")
    rows = gate.evaluate_gate(gate.load_run(out / "eval" / "dpo"), gate.load_run(out / "eval" / "base"), policy)
    passed = gate.write_gate(rows, out / "eval" / "dpo" / "gate.json", policy["skip_is_pass"])
    verdict = "RELEASE" if passed else "DO NOT RELEASE / 不予發布"
    return summary, gate.render_table(rows) + f"\n\nGate verdict for dpo vs base: {verdict}"


def _run(args) -> int:
    from hkllm.data.build import build
    from hkllm.data.card import render_markdown
    from hkllm.data.instructions import build as build_instructions
    from hkllm.data.instructions import load_spec, render_report
    from hkllm.data.recipe import load_recipe
    from hkllm.precision import choose

    out = Path(args.out)
    if args.force and out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = choose("auto")
    print(f"== hkllm quickstart: {chosen.name} on {chosen.device} ({chosen.reason}) ==", flush=True)
    timer = Timer(out)

    def data():
        done = (out / "data" / "datacard.json").exists()
        print("== data: building the demo corpus / 建立示範語料 ==", flush=True)
        print(render_markdown(build(load_recipe(args.data_recipe), out / "data")))
        return None, done

    def instructions():
        print("== instructions: hkllm data instructions recipes/data/instructions.yaml / 生成對話訓練集 ==", flush=True)
        print(render_report(build_instructions(load_spec(args.instructions_recipe), out / "instructions")))
        return None, False

    def stopped(name: str) -> bool:
        if args.stop_after == name:
            print(f"\n== stopped after {name} (--stop-after); run again without it to go on ==\n{timer.table()}")
        return args.stop_after == name

    timer.run("data", data)
    if stopped("data"):
        return 0
    timer.run("instructions", instructions)
    if stopped("instructions"):
        return 0
    if args.train_base or args.smoke:
        timer.run("base", lambda: _stage("base", "base.yaml", out, None, args.smoke))
    else:
        timer.run("base", lambda: shipped_base(out))
    if stopped("base"):
        return 0
    runs = {}
    cpt_runs = ((("cpt-no-replay", {"replay_share": 0.0}),) if args.compare_replay else ()) + (("cpt", {}),)
    for name, fields in cpt_runs:
        runs[name] = timer.run(name, lambda name=name, fields=fields: _stage(name, "cpt.yaml", out, out / "base",
                                                                             args.smoke, **fields))
    if stopped("cpt"):
        return 0
    timer.run("sft", lambda: _stage("sft", "sft.yaml", out, out / "cpt", args.smoke))
    if stopped("sft"):
        return 0
    timer.run("dpo", lambda: _stage("dpo", "dpo.yaml", out, out / "sft", args.smoke))
    if stopped("dpo"):
        return 0
    table = gain_forgetting_table(runs)
    write_atomic(out / "gain_forgetting.md", table + "\n")
    print("\n== Continued pre-training: Hong Kong gain vs general forgetting (bits-per-byte) ==")
    print(table)
    print(f"\nModels / 模型: {out}/base (general) → {out}/cpt (localized) → {out}/sft (chat) → {out}/dpo (preferences)")
    summary, gate_table = timer.run("eval + gate", lambda: (evaluate_and_gate(out, args.smoke), False))
    print(f"\n== Evaluation (recipes/eval/hk_suite.yaml; details in {out}/eval/*/report.md) ==")
    print(summary)
    print(f"\n== Release gate: hkllm gate {out}/eval/dpo {out}/eval/base --policy recipes/eval/gate.yaml ==")
    print(gate_table)
    print(f"\n== Time per stage / 各階段用時 ({out}/timings.json) ==")
    print(timer.table())
    print(f"""
== Serve it / 啟動伺服器 ==
  hkllm serve {out}/dpo --no-auth
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "dpo", "messages": [{{"role": "user", "content": "香港有幾多個區？"}}]}}'
(with keys: `hkllm keys create --name me`, then drop --no-auth and add -H "Authorization: Bearer $KEY")

== 港文通 document assistant / 文件助理 ==
  the same server, in a browser: http://127.0.0.1:8000/app
  draft a letter from a template and export it to Word, rewrite, translate, summarize, or ask an
  uploaded PDF with citations (起草公函並匯出 Word、改寫、翻譯、摘要、就上載文件提問並附出處)""")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart", help="end-to-end demo on the embedded default: data → base → cpt → sft → dpo",
        description="Run the whole hkllm pipeline on the embedded default (a tiny model hkllm trained from scratch and ships), "
        "small enough for a 2-core laptop. Re-running skips finished stages and resumes interrupted ones.",
    )
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    p.add_argument("--data-recipe", default=str(REPO / "recipes" / "data" / "demo.yaml"),
                   help="data recipe (default: recipes/data/demo.yaml)")
    p.add_argument("--instructions-recipe", default=str(REPO / "recipes" / "data" / "instructions.yaml"),
                   help="chat training set recipe (default: recipes/data/instructions.yaml)")
    p.add_argument("--compare-replay", action="store_true",
                   help="also train cpt without replay, to show what replay saves (adds ~2 min on 2 cores)")
    p.add_argument("--train-base", action="store_true",
                   help=f"train the base from scratch (recipes/tiny/base.yaml, ~10 min on 2 cores) instead of "
                        f"copying the shipped one ({SHIPPED_BASE})")
    p.add_argument("--force", action="store_true", help="discard earlier results in --out and start again")
    p.add_argument("--smoke", action="store_true", help="a few steps of a very small model per stage (for tests)")
    p.add_argument("--stop-after", choices=["data", "instructions", "base", "cpt", "sft", "dpo"],
                   help="stop after this stage (a re-run without it goes on from there)")
    p.set_defaults(func=_run)
