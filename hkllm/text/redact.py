"""Replace personal data with typed placeholders.

    from hkllm.text import redact
    redact("身份證 A123456(3)，電話 9123 4567")   # -> "身份證 [HKID]，電話 [PHONE]"

Each detector is a regex for candidates plus a validator, so that look-alikes survive:
HKID only with a valid check digit, payment cards only when Luhn-valid, HK phone numbers only
with a plausible leading digit and not inside longer digit runs, amounts, dates, year ranges or
references.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

# --- HKID -------------------------------------------------------------------------------------
# One or two letters, six digits, check digit 0-9 or A, optionally in brackets.
_HKID = re.compile(r"(?<![A-Za-z0-9])([A-Z]{1,2})(\d{6})\s?(?:\(([0-9A])\)|（([0-9A])）|([0-9A]))(?![A-Za-z0-9])")


def hkid_check_digit(prefix: str, digits: str) -> str:
    """Check digit of an HKID: letters A=10..Z=35, a missing first letter counts 36; weights 9..2."""
    letters = prefix.upper().rjust(2)
    values = [36 if c == " " else ord(c) - ord("A") + 10 for c in letters] + [int(d) for d in digits]
    total = sum(v * w for v, w in zip(values, range(9, 1, -1)))
    check = (11 - total % 11) % 11
    return "A" if check == 10 else str(check)


def is_valid_hkid(text: str) -> bool:
    m = _HKID.fullmatch(text.strip())
    return bool(m) and _hkid_match_valid(m)


def _hkid_match_valid(m: re.Match) -> bool:
    check = m.group(3) or m.group(4) or m.group(5)
    return hkid_check_digit(m.group(1), m.group(2)) == check


# --- payment cards ----------------------------------------------------------------------------
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")


def luhn_valid(number: str) -> bool:
    digits = [int(d) for d in re.sub(r"\D", "", number)]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_valid(m: re.Match) -> bool:
    # Card numbers are written in groups of 4 (or unbroken); a random digit run is not a card.
    raw = m.group(0)
    groups = re.split(r"[ -]", raw)
    grouped = len(groups) == 1 or all(len(g) == 4 for g in groups[:-1])
    return grouped and luhn_valid(raw)


# --- HK phone numbers -------------------------------------------------------------------------
# 8 digits, optional +852/852/(852); landlines start 2-3, mobiles 4-7 and 9 (8 is reserved for
# special services and 1 for short codes). Digits may be grouped 4-4 or 3-5 with a space/hyphen.
_PHONE = re.compile(
    r"(?<![\w.$:-])"
    r"(?:(?:\+|00)?852[\s-]?|\(\+?852\)\s?)?"
    r"([2-79]\d{3}[\s-]?\d{4}|[2-79]\d{2}[\s-]\d{5})"
    r"(?![\w%-]|[.,]\d)"
)
# Context that makes an 8-digit run a reference/amount rather than a phone number.
_NOT_PHONE_BEFORE = re.compile(r"(?:HK\$|\$|編號|號碼[:：]?\s*No\.?|No\.?|Ref\.?|#|參考)\s*$", re.I)


_DATE_LIKE = re.compile(r"(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])")
# Two years, the second later, are a range ("2007-2008 年", "2023-2024 年度", "from 2007 2008"),
# not a landline that happens to start with 20 (ranges written with –, —, ～ or 至 never match
# _PHONE at all). Only words saying it is a number override this.
_YEAR_PAIR = re.compile(r"((?:19|20)\d\d)[\s-]((?:19|20)\d\d)")
_SAID_PHONE = re.compile(r"(?:電話|致電|熱線|傳真|tel|phone|call|fax|hotline|whatsapp)\W{0,3}$", re.I)


def _year_range(m: re.Match, before: str) -> bool:
    pair = _YEAR_PAIR.fullmatch(m.group(0))  # the whole match: a +852 prefix makes it a phone number
    return bool(pair) and int(pair.group(1)) < int(pair.group(2)) and not _SAID_PHONE.search(before)


def _phone_valid(m: re.Match, text: str) -> bool:
    before, after = text[max(0, m.start() - 12) : m.start()], text[m.end() : m.end() + 2]
    if _NOT_PHONE_BEFORE.search(before):
        return False
    # Part of a longer run of digit groups (a card, an account number)?
    if re.search(r"\d[\s-]$", before) or re.match(r"[\s-]\d", after):
        return False
    if _year_range(m, before):
        return False
    # An unbroken YYYYMMDD is a date, not a phone number.
    return not _DATE_LIKE.fullmatch(m.group(0))


# --- e-mail -----------------------------------------------------------------------------------
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")


_ANY_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class Detector:
    placeholder: str
    pattern: re.Pattern
    valid: Callable[[re.Match, str], bool] = lambda m, text: True


# Order matters: longer, stricter patterns first so that a card number is not read as phones.
DETECTORS: tuple[Detector, ...] = (
    Detector("[EMAIL]", _EMAIL),
    Detector("[CARD]", _CARD, lambda m, text: _card_valid(m)),
    Detector("[HKID]", _HKID, lambda m, text: _hkid_match_valid(m)),
    Detector("[PHONE]", _PHONE, _phone_valid),
)


@dataclass
class RedactResult:
    text: str
    counts: Counter = field(default_factory=Counter)


def redact_with_counts(text: str, detectors: tuple[Detector, ...] = DETECTORS) -> RedactResult:
    """Redact `text` and count the replacements per placeholder type."""
    counts: Counter = Counter()
    has_digit, has_at = bool(_ANY_DIGIT.search(text)), "@" in text
    for det in detectors:
        if not (has_at if det.placeholder == "[EMAIL]" else has_digit):
            continue  # nothing to find: every other type needs digits

        def replace(m: re.Match, det=det, source=text) -> str:
            if det.valid(m, source):
                counts[det.placeholder] += 1
                return det.placeholder
            return m.group(0)

        text = det.pattern.sub(replace, text)
    return RedactResult(text, counts)


def redact(text: str) -> str:
    """Replace HKIDs, HK phone numbers, e-mail addresses and payment cards with placeholders."""
    return redact_with_counts(text).text
