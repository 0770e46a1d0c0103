"""The `hkllm` command: one entry point, one sub-command per stage.

    hkllm --help
    hkllm quickstart            # the end-to-end demo on the embedded default
    hkllm text detect < lines.txt
    hkllm data build recipes/data/demo.yaml --out runs/data

Each stage package registers its own sub-commands (`add_parser`) and imports its heavy
dependencies only when its command runs, so `hkllm --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from hkllm import __version__
from hkllm.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from hkllm import quickstart, realmodel
    from hkllm.data import cli as data_cli
    from hkllm.eval import cli as eval_cli
    from hkllm.eval import gate
    from hkllm.safety import cli as safety_cli
    from hkllm.serve import bench
    from hkllm.serve import cli as serve_cli
    from hkllm.text import cli as text_cli
    from hkllm.train import cli as train_cli
    from hkllm.train import gguf_export, model_import, plan, tokenizer_extend

    parser = argparse.ArgumentParser(
        prog="hkllm",
        description="Make and run a Hong Kong-localized LLM: data → train → eval → serve. "
        "建立及運行香港本地化大型語言模型。",
        epilog="Run `hkllm COMMAND --help` for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"hkllm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quickstart.add_parser(sub)
    realmodel.add_parser(sub)
    text_cli.add_parser(sub)
    data_cli.add_parser(sub)
    train_cli.add_parser(sub)
    tokenizer_extend.add_parser(sub)
    model_import.add_parser(sub)
    gguf_export.add_parser(sub)
    plan.add_parser(sub)
    eval_cli.add_parser(sub)
    gate.add_parser(sub)
    serve_cli.add_parser(sub, extensions=(_document_app,))
    bench.add_parser(sub)
    safety_cli.add_parser(sub)
    return parser


def _document_app(app, gateway) -> None:
    """港文通 at /app on `hkllm serve` (hkllm/app sits above serve: the command layer joins them)."""
    from hkllm.app.web import mount

    mount(app, gateway)


def main(argv: list[str] | None = None) -> int:
    import os
    import shutil

    if not shutil.which("nvidia-smi"):
        # No GPU here: tell DeepSpeed (imported by transformers) so it does not warn on every run.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"hkllm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hkllm: interrupted (已中斷); finished work is kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
