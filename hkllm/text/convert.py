"""Script conversion and cleanup for Hong Kong text.

    from hkllm.text import convert, clean
    convert("软件网络里面", to="hk")   # -> "軟件網絡裏面"  (HK character forms and phrases)

`clean` is what every pipeline runs first: control characters and zero-width marks removed,
full-width ASCII letters/digits folded to half-width (Chinese punctuation stays full-width),
whitespace collapsed. `convert` adds OpenCC script conversion on top of it.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

TARGETS = ("hk", "hant", "hans")

# OpenCC configs applied in order. Taiwan forms are first mapped to OpenCC's standard Traditional
# (tw2t: 裡→裏), then s2hk turns Simplified *and* standard Traditional into HK forms (說→説, 线→綫)
# in one pass, so mixed input comes out uniform.
_OPENCC_CHAINS = {
    "hk": ("tw2t", "s2hk"),
    # Taiwan-standard Traditional: normalise HK/TW variants first, then Simplified → Traditional.
    "hant": ("hk2t", "s2tw"),
    "hans": ("hk2s", "tw2s"),
}

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u3000\u2000-\u200a\u202f\u205f]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# ASCII punctuation written right after a CJK character is a typing slip for the full-width form.
_HALF_PUNCT_AFTER_CJK = re.compile(rf"(?<=[{_CJK}])([,?!:;])(?!\d)")
_FULL_PUNCT = {",": "，", "?": "？", "!": "！", ":": "：", ";": "；"}


def _width_table() -> dict[int, str]:
    """Full-width ASCII letters, digits and some symbols → half-width; half-width katakana → full."""
    table = {c: chr(c - 0xFEE0) for c in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B)]}
    table.update({ord(ch): chr(ord(ch) - 0xFEE0) for ch in "＠＃＄％＆＋＝／＜＞＿｜～＼＾｀＊"})
    table.update({c: unicodedata.normalize("NFKC", chr(c)) for c in range(0xFF61, 0xFFA0)})
    table.update(_ZERO_WIDTH)
    return table


_WIDTH_AND_ZERO_WIDTH = _width_table()


def clean(text: str) -> str:
    """Remove control and zero-width characters, fold widths, collapse spaces (newlines kept)."""
    text = unicodedata.normalize("NFC", text).translate(_WIDTH_AND_ZERO_WIDTH)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _HALF_PUNCT_AFTER_CJK.sub(lambda m: _FULL_PUNCT[m.group(1)], text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


@lru_cache(maxsize=None)
def _opencc(config: str):
    import opencc

    return opencc.OpenCC(config)


def convert(text: str, to: str = "hk") -> str:
    """Clean `text`, then convert its script: `hk` (HK Traditional), `hant` (Taiwan-standard
    Traditional) or `hans` (Simplified). Simplified, Taiwan and HK input are all accepted."""
    if to not in TARGETS:
        raise ValueError(f"unknown target script {to!r}; choose one of {', '.join(TARGETS)}")
    text = clean(text)
    for config in _OPENCC_CHAINS[to]:
        text = _opencc(config).convert(text)
    return text
