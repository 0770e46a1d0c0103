"""`hkllm watermark detect`: is this text watermarked with this server's key?

    hkllm watermark detect answers.txt --model runs/quickstart/dpo            # key from hkllm-serve/
    hkllm watermark detect answers.jsonl --model DIR --state-dir /srv/hkllm    # JSONL: the "text" field
    echo '...' | hkllm watermark detect --model DIR

Input (FILE or stdin, UTF-8): one document per line. A line that is a JSON object is read as
JSONL: its `text` field (`--field` for another) is the document and its `id`, if any, is echoed
back; any other line is the document itself (write JSONL for documents that span lines).
Output: one JSON object per input line, in order — the fields of
`hkllm.safety.watermark.detect` (verdict, p_value, z, scored_tokens, scheme, variant, tries,
config_id, window) plus `line` (and `id`). A summary goes to stderr. The key is read from the
same state folder as `hkllm serve` (never created here, never printed).
"""

from __future__ import annotations

import argparse
import json
import sys

from hkllm.errors import UserError

STATE_DIR = "hkllm-serve"   # = watermark.DEFAULT_STATE_DIR = hkllm serve's default (not imported: --help stays fast)


def _documents(stream, field: str):
    """(line number, id or None, text or None, error or None) per input line."""
    for lineno, raw in enumerate(stream, start=1):
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            print(f"line {lineno}: invalid UTF-8 at byte {e.start}; bad bytes replaced by U+FFFD (not scored)",
                  file=sys.stderr)
            line = raw.decode("utf-8", errors="replace")
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                doc_id = obj.get("id")
                if not isinstance(obj.get(field), str):
                    yield lineno, doc_id, None, f"JSON object without a string '{field}' field"
                else:
                    yield lineno, doc_id, obj[field], None
                continue
        yield lineno, None, line, None


def _detect(args) -> int:
    from hkllm.safety.watermark import WatermarkConfig, detect, load_key

    key = load_key(args.state_dir)
    try:
        config = WatermarkConfig.from_dict(json.loads(args.config)) if args.config else WatermarkConfig()
    except (ValueError, TypeError) as e:
        raise UserError(f"--config: {e}") from None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except (OSError, ValueError) as e:
        raise UserError(f"--model {args.model}: no tokenizer there ({type(e).__name__}); give the served model "
                        "folder / 找不到模型的分詞器") from None
    variants = ("raw",) if args.no_convert else ("raw", "s2hk", "t2hk")
    stream = sys.stdin.buffer if args.file in (None, "-") else open(args.file, "rb")
    counts = {"watermarked": 0, "not_watermarked": 0, "too_short": 0, "error": 0}
    try:
        for lineno, doc_id, text, error in _documents(stream, args.field):
            head = {"line": lineno, **({"id": doc_id} if doc_id is not None else {})}
            if error:
                counts["error"] += 1
                out = {**head, "verdict": "error", "error": error}
            else:
                out = {**head, **detect(text, tokenizer, key, config, alpha=args.alpha, variants=variants,
                                        windows=not args.no_windows, min_scored_tokens=args.min_scored_tokens)}
                counts[out["verdict"]] += 1
            sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    sys.stdout.flush()
    n = sum(counts.values())
    print(f"{n} document(s): {counts['watermarked']} watermarked, {counts['not_watermarked']} not, "
          f"{counts['too_short']} too short to judge" + (f", {counts['error']} unreadable" if counts["error"] else "")
          + f" (p ≤ {args.alpha:g})", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("watermark", help="detect hkllm's watermark in text",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = sub.add_parser("detect", help="one JSON verdict per input line (plain text or JSONL)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("file", nargs="?", metavar="FILE", help="input file (default: stdin)")
    d.add_argument("--model", required=True, metavar="DIR", help="the served model folder (its tokenizer)")
    d.add_argument("--state-dir", default=STATE_DIR, metavar="DIR",
                   help=f"hkllm serve's state folder, which holds watermark.key (default {STATE_DIR}/)")
    d.add_argument("--alpha", type=float, default=0.01, help="p-value at or below which text is called "
                   "watermarked (default 0.01)")
    d.add_argument("--field", default="text", help="JSONL: the field that holds the document (default text)")
    d.add_argument("--min-scored-tokens", type=int, default=16, metavar="N",
                   help="fewer scored tokens than this: 'too_short', no verdict (default 16)")
    d.add_argument("--config", metavar="JSON", help="watermark settings if the server's differ from the "
                   "defaults, e.g. '{\"gumbel_context_width\": 4}'")
    d.add_argument("--no-convert", action="store_true", help="score the text only as given (no s2hk / t2hk tries)")
    d.add_argument("--no-windows", action="store_true", help="score whole documents only (no window scan)")
    d.set_defaults(func=_detect)
