"""`hkllm quickstart`: the end-to-end demo on the embedded default, minutes on 2 cores.

    hkllm quickstart --out runs/quickstart

1. data  build the demo corpus (recipes/data/demo.yaml) and print its data card
2. base  train a tiny general model from scratch (recipes/tiny/base.yaml)
3. cpt   localize it on the corpus twice: without replay and with 25% replay
4. sft   chat fine-tuning on the Hong Kong instruction set
5. dpo   preference optimisation
6. eval  every model on recipes/eval/hk_suite.yaml, then `hkllm gate` dpo against base
and print the table of Hong Kong gain and general forgetting (bits-per-byte) for both cpt runs,
the evaluation summary and the gate's verdicts, and how to serve the model.
A finished stage (its metrics.json exists) is skipped on re-run; an interrupted one resumes
from its last checkpoint. `--smoke` shrinks every stage to seconds (used by the tests).
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HK, GENERAL = ("yue", "zh-hant"), ("en", "zh-hans")


def _repo_paths(specs: list) -> list:
    """Recipe paths like data/general/... are relative to the repository; make them absolute."""
    out = []
    for spec in specs:
        spec = {"path": spec} if isinstance(spec, str) else dict(spec)
        if spec["path"] != "pydoc:" and not Path(spec["path"]).is_absolute():
            spec["path"] = str(REPO / spec["path"])
        out.append(spec)
    return out


def _stage(name: str, recipe_file: str, out: Path, model_path: Path | None, data_dir: Path, smoke: bool, **fields):
    from hkllm.train.recipe import load

    run_dir = out / name
    if (run_dir / "metrics.json").exists():
        print(f"== {name}: done earlier, skipped ({run_dir}) ==")
        return json.loads((run_dir / "metrics.json").read_text())
    recipe = load(REPO / "recipes" / "tiny" / recipe_file)
    recipe.out = str(run_dir)
    if model_path:
        recipe.model.path = str(model_path)
    heldout_hk = {"path": str(data_dir), "split": "heldout"}
    recipe.eval = [heldout_hk] + [s for s in _repo_paths(recipe.eval) if "quickstart" not in s["path"]]
    recipe.data.train = [({"path": str(data_dir)} if "quickstart" in str(s.get("path")) else s)
                         for s in _repo_paths(recipe.data.train)]
    recipe.data.replay = _repo_paths(recipe.data.replay)
    for key, value in fields.items():
        setattr(recipe.data, key, value)
    if smoke:
        recipe.train.max_steps, recipe.train.batch_size, recipe.train.seq_len = 6, 4, 128
        recipe.model.hidden_size, recipe.model.num_layers, recipe.model.intermediate_size = 64, 2, 256
        recipe.model.vocab_size, recipe.eval_max_chars = 1000, 2000
    print(f"== {name}: hkllm train {recipe.stage} recipes/tiny/{recipe_file} → {run_dir} ==", flush=True)
    from hkllm.train import runner

    return runner(recipe.stage)(recipe, f"hkllm quickstart ({name})")


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
           "consistency.repeat.max_distinct", "safety.refusal_rate", "safety.over_refusal_rate"]


def _suite(out: Path, smoke: bool) -> Path:
    """recipes/eval/hk_suite.yaml with its paths made absolute and pointed at this run's corpus."""
    import yaml

    suite = yaml.safe_load((REPO / "recipes" / "eval" / "hk_suite.yaml").read_text(encoding="utf-8"))
    for name, cfg in suite["tasks"].items():
        for key in ("path", "policy"):
            if key in cfg:
                cfg[key] = str(REPO / cfg[key])
        if name == "lm":
            cfg["sources"] = [{**s, "path": str(out / "data")} if "quickstart" in s["path"] else s
                              for s in _repo_paths(cfg["sources"])]
        if smoke:
            cfg.update(max_tokens=4, max_docs=8, probes=2, k=2)
    path = out / "eval" / "suite.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by hkllm quickstart from recipes/eval/hk_suite.yaml\n"
                    + yaml.safe_dump(suite, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


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
    from hkllm.data.recipe import load_recipe

    out = Path(args.out)
    if args.force and out.exists():
        import shutil

        shutil.rmtree(out)
    print("== data: building the demo corpus / 建立示範語料 ==", flush=True)
    card = build(load_recipe(args.data_recipe), out / "data")
    print(render_markdown(card))
    data_dir = out / "data"
    _stage("base", "base.yaml", out, None, data_dir, args.smoke)
    runs = {
        "cpt-no-replay": _stage("cpt-no-replay", "cpt.yaml", out, out / "base", data_dir, args.smoke, replay_share=0.0),
        "cpt": _stage("cpt", "cpt.yaml", out, out / "base", data_dir, args.smoke),
    }
    _stage("sft", "sft.yaml", out, out / "cpt", data_dir, args.smoke)
    _stage("dpo", "dpo.yaml", out, out / "sft", data_dir, args.smoke)
    table = gain_forgetting_table(runs)
    (out / "gain_forgetting.md").write_text(table + "\n", encoding="utf-8")
    print("\n== Continued pre-training: Hong Kong gain vs general forgetting (bits-per-byte) ==")
    print(table)
    print(f"\nModels / 模型: {out}/base (general) → {out}/cpt (localized) → {out}/sft (chat) → {out}/dpo (preferences)")
    summary, gate_table = evaluate_and_gate(out, args.smoke)
    print(f"\n== Evaluation (recipes/eval/hk_suite.yaml; details in {out}/eval/*/report.md) ==")
    print(summary)
    print(f"\n== Release gate: hkllm gate {out}/eval/dpo {out}/eval/base --policy recipes/eval/gate.yaml ==")
    print(gate_table)
    print(f"""
== Serve it / 啟動伺服器 ==
  hkllm serve {out}/dpo --no-auth
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "dpo", "messages": [{{"role": "user", "content": "香港有幾多個區？"}}]}}'
(with keys: `hkllm keys create --name me`, then drop --no-auth and add -H "Authorization: Bearer $KEY")""")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart", help="end-to-end demo on the embedded default: data → base → cpt → sft → dpo",
        description="Run the whole hkllm pipeline on the embedded default (a tiny model trained from scratch), "
        "small enough for a 2-core laptop. Re-running skips finished stages and resumes interrupted ones.",
    )
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    p.add_argument("--data-recipe", default=str(REPO / "recipes" / "data" / "demo.yaml"),
                   help="data recipe (default: recipes/data/demo.yaml)")
    p.add_argument("--force", action="store_true", help="discard earlier results in --out and start again")
    p.add_argument("--smoke", action="store_true", help="a few steps of a very small model per stage (for tests)")
    p.set_defaults(func=_run)
