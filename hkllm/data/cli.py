"""`hkllm data build RECIPE.yaml --out DIR`: build a localization corpus (see hkllm/data/build.py);
`hkllm data instructions RECIPE.yaml --out DIR`: generate a chat training set (hkllm/data/instructions.py)."""

from __future__ import annotations

from pathlib import Path


def _build(args) -> int:
    from hkllm.data.build import build
    from hkllm.data.card import render_markdown
    from hkllm.data.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.workers:
        recipe.workers = args.workers
    card = build(recipe, Path(args.out), force=args.force, progress=not args.quiet)
    if not args.quiet:
        print(render_markdown(card))
    print(f"corpus written to {args.out} (train/, heldout/, datacard.md) / 語料已寫入 {args.out}")
    return 0


def _instructions(args) -> int:
    from hkllm.data.instructions import build, load_spec, render_report

    report = build(load_spec(args.recipe), args.out)
    print(render_report(report))
    print(f"chat set written to {args.out} (chat.jsonl, facts.jsonl, report.md) / 對話訓練集已寫入 {args.out}")
    return 0


def _convert_chat(args) -> int:
    from hkllm.data.chat import convert

    n = convert(args.input, args.format, args.out)
    print(f"{n} conversations written to {args.out} (OpenAI messages JSONL)")
    return 0


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="build the localization corpus (datatrove pipeline)",
                                 description="Corpus building for Hong Kong localization.")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{build,instructions,convert-chat}")
    p = sub.add_parser(
        "build", help="read, clean, dedup, decontaminate, split and mix sources into a corpus",
        description="Run a data recipe: read sources → normalize → detect variety → redact → quality filters → "
        "exact dedup → MinHash near-dedup → decontamination → train/held-out split → mix. "
        "Re-running the same command resumes: finished tasks are skipped (if you changed the input files, "
        "add --force to rebuild).",
        epilog="example: hkllm data build recipes/data/demo.yaml --out runs/data",
    )
    p.add_argument("recipe", help="recipe YAML (see recipes/data/demo.yaml)")
    p.add_argument("--out", required=True, help="output folder (created; resumed if it holds this recipe's build)")
    p.add_argument("--workers", type=int, default=0, help="parallel tasks (default: the recipe's 'workers')")
    p.add_argument("--force", action="store_true", help="delete an existing build in --out and start again")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no data card on screen")
    p.set_defaults(func=_build)

    p = sub.add_parser(
        "instructions", help="generate a chat training set from tables and seed files, decontaminated",
        description="Expand facts, open-data tables, safety seeds and parallel sentences by templates into "
        "conversations in Cantonese, Standard Written Chinese and English (chat.jsonl), plus fact documents for "
        "continued pre-training (facts.jsonl). Chats that share an n-gram with an evaluation set are dropped and "
        "counted (report.md).",
        epilog="example: hkllm data instructions recipes/data/instructions.yaml --out runs/instructions",
    )
    p.add_argument("recipe", help="instructions recipe YAML (see recipes/data/instructions.yaml)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_instructions)

    p = sub.add_parser(
        "convert-chat", help="convert alpaca or sharegpt chat data to OpenAI messages JSONL",
        description="Convert alpaca ({instruction, input, output}) or sharegpt ({conversations: [{from, value}]}) "
        "records, as JSONL or a JSON array, to {\"messages\": [...]} JSONL. Errors name file, line and field.",
        epilog="example: hkllm data convert-chat --format alpaca alpaca_data.json --out chat.jsonl",
    )
    p.add_argument("input", help="alpaca or sharegpt file (JSONL or JSON array)")
    p.add_argument("--format", required=True, choices=("alpaca", "sharegpt"))
    p.add_argument("--out", required=True, help="output JSONL")
    p.set_defaults(func=_convert_chat)
