"""The files that ship with hkllm: recipes/ and data/ (demo corpus, chat seeds, evaluation sets).

    from hkllm import assets
    assets.path("recipes/tiny/base.yaml")     # a Path that exists, in a checkout or an installed wheel
    assets.ROOT                               # the folder holding recipes/ and data/

In a checkout they are the repository's top-level recipes/ and data/ (where a reader looks for
them). A wheel carries the same two trees as hkllm/_assets/recipes and hkllm/_assets/data: setup.py
copies them in at build time, so relative paths between them (recipes/data/demo.yaml reads
../../data/demo/...) hold in both layouts.
"""

from __future__ import annotations

from pathlib import Path

from hkllm.errors import UserError

PACKAGED = Path(__file__).resolve().parent / "_assets"
CHECKOUT = Path(__file__).resolve().parent.parent
NAMES = ("recipes", "data")


def root() -> Path:
    """hkllm/_assets in an installed wheel, else the checkout (the repository root)."""
    if (PACKAGED / "recipes").is_dir():
        return PACKAGED
    return CHECKOUT


ROOT = root()


def path(relative: str | Path) -> Path:
    """ROOT / relative, which must exist (e.g. "data/eval/hk_knowledge.jsonl")."""
    p = ROOT / relative
    if not p.exists():
        raise UserError(f"{relative}: not among hkllm's shipped files (looked in {ROOT}); "
                        "reinstall hkllm, or run from a checkout")
    return p
