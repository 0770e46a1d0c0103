"""`hkllm quickstart`: the end-to-end demo on the embedded default.

    hkllm quickstart --out runs/quickstart

Builds the demo corpus from recipes/data/demo.yaml (Cantonese from pycantonese, the Hong
Kong public-information sample in data/demo, English replay text shipped with Python) and
prints its data card. Later stages (train, evaluate, serve) extend this command.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(args) -> int:
    from hkllm.data.build import build
    from hkllm.data.card import render_markdown
    from hkllm.data.recipe import load_recipe

    out = Path(args.out)
    print("== 1/1 data: building the demo corpus / 建立示範語料 ==")
    card = build(load_recipe(args.data_recipe), out / "data", force=args.force)
    print(render_markdown(card))
    print(f"Corpus: {out / 'data'} (train/, heldout/, datacard.md)")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart", help="end-to-end demo on the embedded default (builds the demo corpus)",
        description="Run the whole hkllm pipeline on the embedded default, small enough for a 2-core laptop. "
        "Re-running resumes finished work.",
    )
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    p.add_argument("--data-recipe", default=str(REPO / "recipes" / "data" / "demo.yaml"),
                   help="data recipe (default: recipes/data/demo.yaml)")
    p.add_argument("--force", action="store_true", help="discard earlier results in --out and start again")
    p.set_defaults(func=_run)
