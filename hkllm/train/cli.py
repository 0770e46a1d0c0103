"""`hkllm train {base,cpt,sft,dpo} RECIPE.yaml [key=value ...]`."""

from __future__ import annotations

import shlex
import sys


def _train(args) -> int:
    from hkllm.train.recipe import load

    recipe = load(args.recipe, args.overrides)
    if recipe.stage != args.stage:
        from hkllm.errors import UserError

        raise UserError(f"{args.recipe} is a '{recipe.stage}' recipe, not '{args.stage}'")
    command = "hkllm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    from hkllm.train import runner

    metrics = runner(args.stage)(recipe, command)
    print(f"model saved to {recipe.out} / 模型已儲存 — bits-per-byte after: {metrics.get('bpb_after')}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a stage: base, cpt (continued pre-training), sft, dpo",
        description="Run one training stage from a YAML recipe. Any recipe field can be overridden as key=value, "
        "e.g. train.max_steps=50 data.replay_share=0.25 model.path=runs/tiny/base. Re-running resumes from the "
        "last checkpoint in the run folder.",
        epilog="example: hkllm train base recipes/tiny/base.yaml train.max_steps=100",
    )
    p.add_argument("stage", choices=("base", "cpt", "sft", "dpo"))
    p.add_argument("recipe", help="recipe YAML (see recipes/tiny/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe field overrides")
    p.set_defaults(func=_train)
