"""`hkllm eval`: score a model folder or a served model on an evaluation suite."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hkllm.errors import UserError


def _eval(args) -> int:
    from hkllm.eval import run

    if args.backend == "lm-eval":
        if not args.base_url or not args.tasks:
            raise UserError("--backend lm-eval needs --base-url (a served model) and --tasks")
        tokenizer = args.tokenizer or args.model
        if not tokenizer:
            raise UserError("--backend lm-eval needs --tokenizer MODEL_DIR (lm-eval tokenizes requests itself)")
        results = run.evaluate_lm_eval(args.base_url, args.served_model, tokenizer, args.tasks.split(","), args.out,
                                       args.include_path, args.limit, args.api_key)
    else:
        if bool(args.model) == bool(args.base_url):
            raise UserError("give either MODEL (a model folder) or --base-url URL / 請指定模型資料夾或伺服器")
        if not args.suite:
            raise UserError("--suite SUITE.yaml is required (e.g. recipes/eval/hk_suite.yaml)")
        from hkllm.eval.backends import LocalBackend, RemoteBackend

        model = LocalBackend(args.model) if args.model else RemoteBackend(args.base_url, args.api_key, args.served_model)
        print(f"hkllm eval: {model.name} ({model.version}) on {args.suite} → {args.out}", file=sys.stderr)
        results = run.evaluate(model, args.suite, args.out, args.previous, args.data_dir, args.force,
                               progress=lambda m: print(m, file=sys.stderr))
    print(run.report(results))
    print(f"written: {Path(args.out) / 'results.json'}, samples.jsonl, report.md", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    from hkllm.eval import run

    p = subparsers.add_parser("eval", help="evaluate a model: HK gain, forgetting, consistency, safety",
                              description=run.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="a model folder, scored in this process")
    p.add_argument("--base-url", help="or an OpenAI-compatible server (hkllm serve, vLLM, SGLang)")
    p.add_argument("--api-key", default="none")
    p.add_argument("--served-model", default=None, help="model id on the server (default: its first)")
    p.add_argument("--suite", help="suite YAML, e.g. recipes/eval/hk_suite.yaml")
    p.add_argument("--out", required=True, help="folder for results.json, samples.jsonl, report.md, plots")
    p.add_argument("--previous", help="a previous release's eval folder: version flip rates against it")
    p.add_argument("--data-dir", help="folder with Yue-Benchmark / HKCanto-Eval files for `external:` entries")
    p.add_argument("--force", action="store_true", help="re-run tasks already finished in --out")
    p.add_argument("--backend", choices=["hkllm", "lm-eval"], default="hkllm",
                   help="lm-eval: run lm-evaluation-harness's local-completions against --base-url")
    p.add_argument("--tasks", help="lm-eval task names, comma-separated (built in: hk_knowledge_mc)")
    p.add_argument("--tokenizer", help="lm-eval: tokenizer folder (default: MODEL)")
    p.add_argument("--include-path", help="lm-eval: a folder of your own task YAMLs")
    p.add_argument("--limit", type=int, default=None, help="lm-eval: items per task")
    p.set_defaults(func=_eval)
