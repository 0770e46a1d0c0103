"""Text files in the encoding a recipe source names (`encoding:`, a Python codec name).

Open data is not all UTF-8: older Hong Kong government files are Big5-HKSCS, Mainland ones
GB18030, and spreadsheet exports often start with a byte-order mark (hence the default,
utf-8-sig, which reads plain UTF-8 too). When a file does not decode, the message says which
line broke and, where another codec reads the file, what to put in the recipe.
"""

from __future__ import annotations

import codecs
import io
from pathlib import Path

DEFAULT = "utf-8-sig"
TYPES = ("jsonl", "table", "text", "html")  # the source types that read text files

# Tried, in this order, when a file does not decode in the codec the recipe names.
_CANDIDATES = ("utf-8-sig", "big5hkscs", "gb18030", "utf-16")
# Frequent characters written the same in Traditional and Simplified Chinese: a file read in the
# right codec is full of them, one read in a wrong double-byte codec ("mojibake") hardly has any.
_COMMON = set("的是不了在有人中上大和到就也你我他能而子得下年用道行所然家事成方多去法都同面起看定天分好小部其些"
              "主理心本前但因只想日意力民第公此已工使情明性知全又正外高由很最重物手向文政美相被利等或新己身果加月市地香"
              "一二三四五六七八九十")
_SAMPLE = 1 << 20  # bytes looked at when guessing


def is_text_codec(name: str) -> bool:
    """A codec Python can open text files with (not 'base64' and the like)."""
    try:
        io.TextIOWrapper(io.BytesIO(), encoding=name)  # the check open() makes
    except LookupError:
        return False
    return True


def first_bad_line(path: Path, encoding: str) -> tuple[int, str]:
    """(line number, reason) of the first line that does not decode; (0, '') when all do."""
    decoder = codecs.getincrementaldecoder(encoding)()
    lineno = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as e:
                return lineno, f"{e.reason}, byte 0x{e.object[e.start]:02x}"
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        return lineno, f"{e.reason} at the end of the file"
    return 0, ""


def guess(path: Path, tried: str) -> str | None:
    """The candidate codec that reads the start of the file best, or None."""
    with open(path, "rb") as f:
        sample = f.read(_SAMPLE)
    best, best_score = None, -1
    for name in _CANDIDATES:
        if codecs.lookup(name).name == codecs.lookup(tried).name:
            continue
        try:
            text = codecs.getincrementaldecoder(name)().decode(sample)  # not final: the sample may end mid-character
        except UnicodeDecodeError:
            continue
        score = sum(c in _COMMON for c in text)
        if score > best_score:
            best, best_score = name, score
    return best


def decode_failure(path: Path, rel: str, encoding: str) -> str:
    """What to tell the user about a file that does not decode as `encoding`."""
    line, reason = first_bad_line(path, encoding)
    where = f"{rel}:{line}" if line else rel
    hint = guess(path, encoding)
    advice = (f"it reads as {hint}: add `encoding: {hint}` to this source" if hint else
              "set `encoding:` on this source to the file's codec (a Python codec name, e.g. big5hkscs or gb18030)")
    return f"{where} is not valid {encoding} ({reason}); {advice} / 檔案編碼不符，請在配方設定 encoding"
