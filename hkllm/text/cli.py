"""`hkllm text convert|detect|redact`: line filters, stdin → stdout.

    echo "软件网络" | hkllm text convert --to hk      # 軟件網絡
    echo "個 meeting 改咗去三點" | hkllm text detect   # {"variety": "yue", "scores": {...}}
    echo "電話 9123 4567" | hkllm text redact          # 電話 [PHONE]

Exactly one output line per input line, UTF-8. A line that is not valid UTF-8 is reported on
stderr as `stdin:LINE: ...` and still answered (its bad bytes shown as U+FFFD), so that the
output stays aligned with the input.
"""

from __future__ import annotations

import json
import sys
from typing import Callable


def _map_lines(transform: Callable[[str], str]) -> int:
    out = sys.stdout
    invalid = 0
    for lineno, raw in enumerate(sys.stdin.buffer, start=1):
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            invalid += 1
            print(f"stdin:{lineno}: invalid UTF-8 at byte {e.start} (無效的 UTF-8 編碼); bad bytes replaced by U+FFFD",
                  file=sys.stderr)
            line = raw.decode("utf-8", errors="replace")
        out.write(transform(line) + "\n")
    out.flush()
    if invalid:
        print(f"{invalid} line(s) were not valid UTF-8", file=sys.stderr)
    return 0


def _convert(args) -> int:
    from hkllm.text import convert

    return _map_lines(lambda line: convert(line, to=args.to))


def _detect(args) -> int:
    from hkllm.text import detect

    def to_json(line: str) -> str:
        d = detect(line)
        return json.dumps({"variety": d.variety, "scores": d.scores}, ensure_ascii=False)

    return _map_lines(to_json)


def _redact(args) -> int:
    from hkllm.text import redact

    return _map_lines(redact)


def add_parser(subparsers) -> None:
    text = subparsers.add_parser(
        "text", help="Hong Kong text toolkit: convert, detect, redact (stdin → stdout)",
        description="Line filters for Hong Kong text. Each reads UTF-8 lines on stdin and writes one line per input line.",
    )
    sub = text.add_subparsers(dest="text_command", required=True, metavar="{convert,detect,redact}")

    p = sub.add_parser(
        "convert", help="script conversion and cleanup (OpenCC; HK forms and phrases)",
        description="Convert script with OpenCC and clean up: control characters and zero-width marks removed, "
        "full-width letters/digits folded, spaces collapsed. Simplified, Taiwan and HK input accepted.",
        epilog="example: echo '软件网络里面' | hkllm text convert --to hk   →  軟件網絡裏面",
    )
    p.add_argument("--to", choices=("hk", "hant", "hans"), default="hk",
                   help="hk: Hong Kong Traditional (default); hant: Taiwan-standard Traditional; hans: Simplified")
    p.set_defaults(func=_convert)

    p = sub.add_parser(
        "detect", help="variety of each line: yue, zh-hant, zh-hans, en, other (JSON lines)",
        description="Print one JSON object per line: {\"variety\": ..., \"scores\": {...}}. "
        "yue = written Cantonese (incl. Cantonese-English code-mixing); zh-hant = Standard Written Chinese "
        "in Traditional characters; zh-hans = Simplified Chinese; en = English; other = anything else. "
        "scores holds the evidence: script shares (han, latin), Cantonese and SWC marker scores (yue, swc), "
        "share of Simplified-only characters (simplified), English and other-language function-word shares.",
        epilog="example: echo '個 meeting 改咗去三點' | hkllm text detect",
    )
    p.set_defaults(func=_detect)

    p = sub.add_parser(
        "redact", help="replace personal data with [HKID] [PHONE] [EMAIL] [CARD]",
        description="Replace HKID numbers (valid check digit only), Hong Kong phone numbers (not years, amounts "
        "or references), e-mail addresses and Luhn-valid payment card numbers with typed placeholders.",
        epilog="example: echo '身份證 A123456(3)，電話 9123 4567' | hkllm text redact",
    )
    p.set_defaults(func=_redact)
