"""Format checker for Hong Kong official documents (公函, 便箋, meeting papers, press releases).

    from hkllm.app.format_check import check, fix, RULES
    for f in check(draft, ["zh.salutation", "zh.numbering"]):
        print(f.rule, f.line, f.message_en, f.fixable)
    draft = fix(draft, "zh.numbering")          # the text with that rule's failures fixed

Plain Python over the text as the app renders it: one line per line, paragraphs separated by a blank
line (a line opening with "2." also starts a paragraph). Each rule is named by an id (templates list
the ids that apply, hkllm/app/templates/*.yaml); `check` returns a `Failure` per problem with the
rule id, a message in Chinese and English, the 1-based line and column and the character span, and
whether `fix(text, rule)` can repair it. A fix changes only what its rule is about, so a document
that passed the other rules still passes them.

Conventions follow the Civil Service Bureau's 《政府公文寫作手冊》 as summarised in
shared/research/document_assistant.md §3: 本函檔號; a 稱謂 line ending in a full-width colon; the
first paragraph unnumbered and numbering from 2; post + name signature with 「（姓名代行）」; 副本送;
dates in Chinese numerals (二〇二六年十二月一日); plain 白話 (no 謹啟/敬啟者/此致); no Cantonese;
Hong Kong character forms. English: Dear Sir/Madam → Yours faithfully, Dear Mr Chan → Yours
sincerely; British spelling; press releases with "today (December 1)", "Ends/…", "Issued at HKT
17:47" and "NNNN".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

# ---------------------------------------------------------------------------------------------
# Result type and rule registry


@dataclass(frozen=True)
class Failure:
    rule: str
    message_zh: str
    message_en: str
    line: int  # 1-based; 0 = the document as a whole (something is missing)
    column: int  # 1-based; 0 with line 0
    start: int  # character offsets into the text checked (start == end: a missing part)
    end: int
    fixable: bool


@dataclass(frozen=True)
class Rule:
    id: str
    language: str  # "zh" | "en" | "any"
    title_zh: str
    title_en: str
    check: Callable[[str], list[tuple]]  # → [(start, end, message_zh, message_en, fixable)]
    fix: Callable[[str], str] | None = None


RULES: dict[str, Rule] = {}


def _rule(rule_id: str, language: str, title_zh: str, title_en: str, fixer: Callable[[str], str] | None = None):
    def register(fn):
        RULES[rule_id] = Rule(rule_id, language, title_zh, title_en, fn, fixer)
        return fn

    return register


ZH_LETTER_RULES = ("zh.reference", "zh.salutation", "zh.numbering", "zh.signature", "zh.copy_to", "zh.date",
                   "zh.plain_style", "zh.no_cantonese", "zh.no_simplified", "zh.hk_forms")
EN_LETTER_RULES = ("en.salutation_closing", "en.british_spelling", "en.date_format")


class UnknownRule(KeyError):
    def __str__(self) -> str:
        return f"unknown format rule {self.args[0]!r}; known rules: {', '.join(sorted(RULES))}"


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def check(text: str, rules: Iterable[str] | None = None) -> list[Failure]:
    """Failures of `rules` (ids from RULES) in `text`, in document order. `rules=None`: the letter
    rules for the text's main script (Chinese or English)."""
    if rules is None:
        rules = ZH_LETTER_RULES if _mostly_chinese(text) else EN_LETTER_RULES
    failures = []
    for rule_id in rules:
        rule = _get(rule_id)
        for start, end, zh, en, fixable in rule.check(text):
            line, column = _position(text, start) if start >= 0 else (0, 0)
            failures.append(Failure(rule_id, zh, en, line, column, max(start, 0), max(end, 0),
                                    fixable and rule.fix is not None))
    return sorted(failures, key=lambda f: (f.line, f.column, f.rule))


def passes(text: str, rules: Iterable[str] | None = None) -> bool:
    return not check(text, rules)


def fix(text: str, rule: str) -> str:
    """`text` with the fixable failures of `rule` repaired (unchanged where nothing is fixable)."""
    r = _get(rule)
    return r.fix(text) if r.fix else text


def fix_all(text: str, rules: Iterable[str]) -> str:
    for rule in rules:
        text = fix(text, rule)
    return text


def _get(rule_id: str) -> Rule:
    try:
        return RULES[rule_id]
    except KeyError:
        raise UnknownRule(rule_id) from None


# ---------------------------------------------------------------------------------------------
# Reading a document's structure

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
_FINAL = "。！？」』）)；…:："
_NUMBERED = re.compile(r"^(\s*)(\d+)\s*[.．、]\s*")
_LABEL = re.compile(r"^[^：:\n]{1,20}[：:]\s*\S")  # "本函檔號：AB/12" — a header field, not a salutation
_EMPTY_LABEL = re.compile(r"^.*(檔號|Ref|電話|Tel|傳真|Fax|電郵|mail|日期|Date|由|致)[^：:]*[：:]$", re.I)
_TITLES = ("先生", "女士", "小姐", "太太", "議員", "主席", "閣下", "局長", "署長", "處長", "博士", "教授", "經理",
           "委員", "校長", "總監", "專員", "秘書", "會長", "醫生", "律師", "法官", "同事", "台鑒", "鈞鑒", "大鑒")


def _mostly_chinese(text: str) -> bool:
    return len(_HAN.findall(text)) >= len(_LATIN_WORD.findall(text))


@dataclass
class _Block:
    start: int  # offset of its first character
    end: int
    text: str


def _lines(text: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    for line in text.split("\n"):
        out.append((pos, line))
        pos += len(line) + 1
    return out


def _blocks(text: str, begin: int = 0) -> list[_Block]:
    """Paragraph blocks from offset `begin`: blank-line separated, a numbered line opens a new one."""
    blocks: list[_Block] = []
    current: list[tuple[int, str]] = []

    def close():
        if current:
            s, e = current[0][0], current[-1][0] + len(current[-1][1])
            blocks.append(_Block(s, e, text[s:e]))
            current.clear()

    for pos, line in _lines(text):
        if pos < begin:
            continue
        if not line.strip():
            close()
        else:
            if current and _NUMBERED.match(line):
                close()
            current.append((pos, line))
    close()
    return blocks


def _salutation(text: str) -> tuple[int, str] | None:
    """(offset, line) of the 稱謂 line: the first short line before the body that ends with a colon
    (陳先生：, 田主席：) or is 敬啟者; failing that, the last line before the body that ends with a
    title (a salutation that lost its colon; the addressee's line above it also ends with one)."""
    titled = None
    for pos, line in _lines(text):
        s = line.strip()
        if not s:
            continue
        if s.endswith("。") or len(s) > 40:
            break  # reached the body
        if _LABEL.match(s) or _EMPTY_LABEL.match(s) or s.startswith(("副本", "附件")):
            continue
        at = pos + (len(line) - len(line.lstrip()))
        if s.endswith(("：", ":")) or s in ("敬啟者", "敬啓者"):
            return at, s
        if s.endswith(_TITLES):
            titled = (at, s)
    return titled


def _is_paragraph(block: _Block) -> bool:
    return block.text.rstrip().endswith(tuple("。！？」』；…")) or bool(_NUMBERED.match(block.text))


@dataclass
class _Letter:
    salutation: tuple[int, str] | None
    subject: _Block | None
    paragraphs: list[_Block]
    after: list[_Block]  # signature block, date, 附件, 副本送


def _letter(text: str) -> _Letter:
    sal = _salutation(text)
    begin = sal[0] + len(sal[1]) if sal else 0
    blocks = _blocks(text, begin)
    subject = None
    if sal and blocks and "\n" not in blocks[0].text and not blocks[0].text.rstrip().endswith(tuple(_FINAL)) \
            and len(blocks[0].text.strip()) <= 40 and not _NUMBERED.match(blocks[0].text):
        subject = blocks.pop(0)
    if not sal:  # a memo or meeting paper: skip its header and title to the first paragraph
        while blocks and not _is_paragraph(blocks[0]):
            blocks.pop(0)
    paragraphs = []
    while blocks and _is_paragraph(blocks[0]):
        paragraphs.append(blocks.pop(0))
    return _Letter(sal, subject, paragraphs, blocks)


# ---------------------------------------------------------------------------------------------
# Chinese rules

_REFERENCE = re.compile(r"^\s*(本函檔號|檔號|本署檔號|本局檔號)(\s*(Our\s*)?Ref\.?)?\s*[:：]\s*(\S.*)?$", re.M | re.I)


@_rule("zh.reference", "zh", "檔號", "Reference line")
def _check_reference(text):
    for m in _REFERENCE.finditer(text):
        if m.group(4) and m.group(4).strip():
            return []
        return [(m.start(1), m.end(), "「本函檔號」沒有填上檔號。", "The reference line (本函檔號) has no reference.", False)]
    return [(-1, -1, "缺少「本函檔號」一行。", "The letter has no reference line (本函檔號).", False)]


def _fix_salutation(text):
    sal = _salutation(text)
    if not sal:
        return text
    pos, s = sal
    if s.endswith("："):
        return text
    new = s[:-1] + "：" if s.endswith(":") else s + "："
    return text[:pos] + new + text[pos + len(s):]


@_rule("zh.salutation", "zh", "稱謂", "Salutation", _fix_salutation)
def _check_salutation(text):
    sal = _salutation(text)
    if not sal:
        return [(-1, -1, "缺少稱謂（例如「陳先生：」）。", "There is no salutation line (e.g. 陳先生：).", False)]
    pos, s = sal
    if s in ("敬啟者", "敬啓者"):
        return []  # reported by zh.plain_style
    if not s.endswith("："):
        return [(pos, pos + len(s), "稱謂應以全形冒號「：」結束。", "The salutation should end with a full-width colon (：).", True)]
    return []


def _renumbered(text: str) -> str:
    # Unnumbering a first paragraph that does not end a sentence can change which blocks count as
    # paragraphs: repeat until nothing changes.
    for _ in range(5):
        new = _renumber_once(text)
        if new == text:
            break
        text = new
    return text


def _renumber_once(text: str) -> str:
    letter = _letter(text)
    out, last = [], 0
    for i, para in enumerate(letter.paragraphs):
        m = _NUMBERED.match(para.text)
        body = para.text[m.end():] if m else para.text.lstrip()
        indent = m.group(1) if m else para.text[: len(para.text) - len(para.text.lstrip())]
        new = body if i == 0 else f"{i + 1}.\t{body}"
        new = (indent if i == 0 else "") + new
        out.append(text[last:para.start])
        out.append(new)
        last = para.end
    out.append(text[last:])
    return "".join(out)


@_rule("zh.numbering", "zh", "段落編號", "Paragraph numbering", _renumbered)
def _check_numbering(text):
    letter = _letter(text)
    problems = []
    for i, para in enumerate(letter.paragraphs):
        m = _NUMBERED.match(para.text)
        if i == 0 and m:
            problems.append((para.start, para.start + m.end(), "第一段不用編號。", "The first paragraph is not numbered.", True))
        elif i > 0 and (not m or int(m.group(2)) != i + 1):
            problems.append((para.start, para.start + (m.end() if m else 1),
                             f"此段應編號為「{i + 1}.」（由第二段起編號）。",
                             f"This paragraph should be numbered {i + 1}. (numbering starts at the second paragraph).", True))
    return problems


_ACTING_GOOD = re.compile(r"（[^（）\s]{1,12}代行）")
_ACTING_ANY = re.compile(r"[(（]?\s*([^\s()（）：:]{1,12}?)\s*代行\s*[)）]?|代行\s*[:：]\s*([^\s()（）]{1,12})")


def _signature_lines(text: str) -> list[tuple[int, str]]:
    letter = _letter(text)
    out = []
    for block in letter.after:
        first = block.text.strip()
        if first.startswith(("副本", "抄送", "附件", "cc", "c.c.", "CC")) or _is_date_line(first):
            break
        pos = block.start
        for line in block.text.split("\n"):
            out.append((pos, line))
            pos += len(line) + 1
    return out


def _is_date_line(s: str) -> bool:
    return bool(re.fullmatch(r"\s*([〇零一二三四五六七八九十]{4}|\d{4})\s*年.{1,3}月.{1,3}日\s*", s)) or \
        bool(re.fullmatch(r"\s*\d{1,2}/\d{1,2}/\d{4}\s*|\s*\d{4}-\d{2}-\d{2}\s*", s))


def _fix_signature(text):
    out, last = [], 0
    for pos, line in _signature_lines(text):
        if "代行" not in line or _ACTING_GOOD.search(line):
            continue
        m = _ACTING_ANY.search(line)
        if not m:
            continue
        name = m.group(1) or m.group(2)
        out += [text[last:pos + m.start()], f"（{name}代行）"]
        last = pos + m.end()
    out.append(text[last:])
    return "".join(out)


@_rule("zh.signature", "zh", "簽署", "Signature block", _fix_signature)
def _check_signature(text):
    lines = [(p, line) for p, line in _signature_lines(text) if line.strip()]
    if not lines:
        return [(-1, -1, "缺少簽署（職銜及姓名，或「職銜（姓名代行）」）。",
                 "There is no signature block (post and name, or post followed by （name代行）).", False)]
    problems = []
    for pos, line in lines:
        if "代行" in line and not _ACTING_GOOD.search(line):
            problems.append((pos, pos + len(line), "代行應寫作「職銜（姓名代行）」，用全形括號。",
                             "Signing for someone is written post + （name代行） in full-width brackets.", True))
    return problems


_COPY = re.compile(r"^(\s*)(副本送|副本抄送|抄送|副本|cc|c\.c\.)(\s*[:：]?\s*)(.*)$", re.M | re.I)


def _fix_copy_to(text):
    def repl(m):
        rest = m.group(4).replace("(", "（").replace(")", "）")
        return f"{m.group(1)}副本送：{rest}"

    return _COPY.sub(repl, text)


@_rule("zh.copy_to", "zh", "副本送", "Copies", _fix_copy_to)
def _check_copy_to(text):
    problems = []
    for m in _COPY.finditer(text):
        if m.group(2) != "副本送" or m.group(3).strip() != "：" or "(" in m.group(4) or ")" in m.group(4):
            problems.append((m.start(2), m.end(), "副本應寫作「副本送：」，備註用全形括號，如「（不連附件）」。",
                             "Copies are listed after 副本送： with notes in full-width brackets, e.g. （不連附件）.", True))
    return problems


_DIGITS_ZH = "〇一二三四五六七八九"


def _zh_number(n: int) -> str:
    if n <= 10:
        return "〇一二三四五六七八九十"[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else _DIGITS_ZH[tens]) + "十" + (_DIGITS_ZH[ones] if ones else "")


def zh_date(year: int, month: int, day: int) -> str:
    """二〇二六年十二月一日"""
    return "".join(_DIGITS_ZH[int(d)] for d in str(year)) + f"年{_zh_number(month)}月{_zh_number(day)}日"


_ARABIC_DATES = re.compile(
    r"(?P<y>\d{4})\s*年\s*(?P<m>\d{1,2})\s*月\s*(?P<d>\d{1,2})\s*日"
    r"|(?<![\d/])(?P<d2>\d{1,2})/(?P<m2>\d{1,2})/(?P<y2>\d{4})(?![\d/])"
    r"|(?<![\d-])(?P<y3>\d{4})-(?P<m3>\d{2})-(?P<d3>\d{2})(?![\d-])"
    r"|(?<![\d年])(?P<m4>\d{1,2})\s*月\s*(?P<d4>\d{1,2})\s*日")
_ZH_DATE = re.compile(r"[〇零一二三四五六七八九]{4}年[一二三四五六七八九十]{1,3}月[一二三四五六七八九十]{1,3}日")


def _date_parts(m: re.Match) -> tuple[int | None, int, int] | None:
    g = m.groupdict()
    for y, mo, d in (("y", "m", "d"), ("y2", "m2", "d2"), ("y3", "m3", "d3"), (None, "m4", "d4")):
        if g[mo]:
            year = int(g[y]) if y else None
            month, day = int(g[mo]), int(g[d])
            if 1 <= month <= 12 and 1 <= day <= 31:
                return year, month, day
    return None


def _fix_dates(text):
    def repl(m):
        parts = _date_parts(m)
        if not parts:
            return m.group(0)
        year, month, day = parts
        return zh_date(year, month, day) if year else f"{_zh_number(month)}月{_zh_number(day)}日"

    return _ARABIC_DATES.sub(repl, text)


@_rule("zh.date", "zh", "日期", "Dates", _fix_dates)
def _check_dates(text):
    problems = [(m.start(), m.end(), f"日期應以中文數字書寫，例如「{_fix_dates(m.group(0))}」。",
                 f"Write dates in Chinese numerals, e.g. {_fix_dates(m.group(0))}.", True)
                for m in _ARABIC_DATES.finditer(text) if _date_parts(m)]
    if not problems and not _ZH_DATE.search(text):
        problems.append((-1, -1, "缺少發出日期（例如「二〇二六年十二月一日」）。",
                         "The document has no date (e.g. 二〇二六年十二月一日).", False))
    return problems


_OLD_STYLE = re.compile(r"敬啟者|敬啓者|謹啟|謹啓|謹覆|此致|請查照|順頌[^\n]{0,4}")


def _fix_plain_style(text):
    lines = []
    for line in text.split("\n"):
        new = _OLD_STYLE.sub("", line)
        if new.strip() or not line.strip():
            lines.append(new.rstrip() if new != line else line)
        # a line that held only the formula goes
    return "\n".join(lines)


@_rule("zh.plain_style", "zh", "白話公文", "Plain style", _fix_plain_style)
def _check_plain_style(text):
    return [(m.start(), m.end(), f"白話公函一般不用「{m.group(0)}」。",
             f"Plain-style (白話) letters do not use 「{m.group(0)}」.", True) for m in _OLD_STYLE.finditer(text)]


@_rule("zh.no_cantonese", "zh", "不用粵語", "No Cantonese")
def _check_no_cantonese(text):
    from hkllm.text import detect

    letter = _letter(text)
    blocks = ([letter.subject] if letter.subject else []) + letter.paragraphs
    if not letter.salutation and not letter.paragraphs:
        blocks = _blocks(text)
    return [(b.start, b.end, "此段是粵語口語，正式文件應用書面語。",
             "This paragraph is written Cantonese; formal documents use Standard Written Chinese.", False)
            for b in blocks if detect(b.text).variety == "yue"]


@lru_cache(maxsize=None)
def _cc(config: str):
    import opencc

    return opencc.OpenCC(config)


def _simplified_positions(text: str) -> list[int]:
    """Offsets of Simplified-only characters (see hkllm.text.checks.simplified_leak)."""
    if not _HAN.search(text):
        return []
    trad = [_cc(c).convert(text) for c in ("s2t", "s2hk", "s2tw")]
    simp = _cc("t2s").convert(text)
    if any(len(t) != len(text) for t in trad + [simp]):
        return []
    candidates = [i for i, ch in enumerate(text)
                  if _HAN.match(ch) and ch != "吓" and all(t[i] != ch for t in trad) and simp[i] == ch]
    if not candidates:
        return []
    # Changed in context *and* on its own: 布 in 宣布 becomes 佈 only by a phrase rule, and 布 is a
    # Traditional character (宣布 is everyday Hong Kong writing), as 后 in 皇后 is.
    alone = _cc("s2hk").convert("\n".join(text[i] for i in candidates)).split("\n")
    return [i for i, a in zip(candidates, alone) if a != text[i]]


def _fix_simplified(text):
    positions = set(_simplified_positions(text))
    if not positions:
        return text
    hk = _cc("s2hk").convert(text)
    text = "".join(hk[i] if i in positions else ch for i, ch in enumerate(text))
    # s2hk's phrase table can give a Taiwan form (线路 → 線路): the replaced characters take the HK form
    chars = list(text)
    for i, want in _taiwan_positions(text):
        if i in positions:
            chars[i] = want
    return "".join(chars)


@_rule("zh.no_simplified", "zh", "不用簡體字", "No Simplified characters", _fix_simplified)
def _check_simplified(text):
    hk = _fix_simplified(text)
    return [(i, i + 1, f"「{text[i]}」是簡體字，應寫作「{hk[i]}」。",
             f"「{text[i]}」 is Simplified; write 「{hk[i]}」.", True) for i in _simplified_positions(text)]


# Taiwan (or OpenCC-standard) forms where Hong Kong writes another: 裡→裏 and 著→着 as OpenCC's tw2t
# decides in context (著名 keeps 著), 臺→台 as t2hk does, and 線→綫 (the 常用字字形表 form that
# `hkllm text convert --to hk` writes). Glyph variants that Hong Kong writes both ways (為/爲, 群/羣,
# 溫/温, 說/説) are not flagged: both are everyday Hong Kong text.
HK_FORMS = {"裡": "裏", "著": "着", "臺": "台", "線": "綫"}


def _taiwan_positions(text: str) -> list[tuple[int, str]]:
    tw2t = _cc("tw2t").convert(text)
    t2hk = _cc("t2hk").convert(text)
    if len(tw2t) != len(text) or len(t2hk) != len(text):
        return []
    out = []
    for i, ch in enumerate(text):
        want = HK_FORMS.get(ch)
        if want and (ch == "線" or tw2t[i] == want or t2hk[i] == want):
            out.append((i, want))
    return out


def _fix_hk_forms(text):
    chars = list(text)
    for i, want in _taiwan_positions(text):
        chars[i] = want
    return "".join(chars)


@_rule("zh.hk_forms", "zh", "香港字形", "Hong Kong character forms", _fix_hk_forms)
def _check_hk_forms(text):
    return [(i, i + 1, f"「{text[i]}」是台灣用字，香港寫作「{want}」。",
             f"「{text[i]}」 is the Taiwan form; Hong Kong writes 「{want}」.", True) for i, want in _taiwan_positions(text)]


@_rule("zh.memo_header", "zh", "便箋表頭", "Memo header")
def _check_memo_header(text):
    problems = []
    for label, en in (("由", "From"), ("致", "To"), ("日期", "Date")):
        if not re.search(rf"^\s*{label}[\s\u3000]*[:：]\s*\S", text, re.M):
            problems.append((-1, -1, f"便箋表頭缺少「{label}：」。", f"The memo header lacks the {en} line ({label}：).", False))
    return problems


@_rule("zh.meeting_details", "zh", "會議資料", "Meeting details")
def _check_meeting_details(text):
    problems = []
    for label, en in (("日期", "date"), ("時間", "time"), ("地點", "venue")):
        if not re.search(rf"^\s*{label}[\s\u3000]*[:：]\s*\S", text, re.M):
            problems.append((-1, -1, f"缺少會議{label}（「{label}：」）。", f"The meeting {en} ({label}：) is missing.", False))
    return problems


# ---------------------------------------------------------------------------------------------
# English rules

_DEAR = re.compile(r"^\s*Dear\s+(.+?)\s*,?\s*$", re.M)
_CLOSING = re.compile(r"^\s*(Yours\s+(faithfully|sincerely|truly)|Sincerely(\s+yours)?|Best\s+regards|Regards)\s*,?\s*$",
                      re.M | re.I)
_IMPERSONAL = re.compile(r"^(Sir|Madam|Sirs|Sir\s*/\s*Madam|Sir\s+or\s+Madam|Madam\s*/\s*Sir|Colleagues|Members)\b",
                         re.I)


def _wanted_closing(text: str) -> str | None:
    m = _DEAR.search(text)
    if not m:
        return None
    return "Yours faithfully" if _IMPERSONAL.match(m.group(1)) else "Yours sincerely"


def _fix_closing(text):
    want = _wanted_closing(text)
    if not want:
        return text
    return _CLOSING.sub(lambda m: m.group(0).replace(m.group(1), want).rstrip().rstrip(",") + ",", text, count=1)


@_rule("en.salutation_closing", "en", "稱謂與結尾敬語", "Salutation and closing", _fix_closing)
def _check_closing(text):
    want = _wanted_closing(text)
    if not want:
        return [(-1, -1, "缺少英文稱謂（Dear …）。", "There is no salutation (Dear …).", False)]
    m = _CLOSING.search(text)
    if not m:
        return [(-1, -1, f"缺少結尾敬語（應為 {want}）。", f"There is no closing ({want} is expected).", False)]
    if m.group(1).lower().split() != want.lower().split():
        dear = _DEAR.search(text).group(1)
        return [(m.start(1), m.end(1), f"「Dear {dear}」應配「{want}」。", f"“Dear {dear}” is closed with “{want}”.", True)]
    return []


US_TO_UK = {
    "color": "colour", "colors": "colours", "favor": "favour", "favorable": "favourable", "honor": "honour",
    "labor": "labour", "neighbor": "neighbour", "neighbors": "neighbours", "neighborhood": "neighbourhood",
    "behavior": "behaviour", "center": "centre", "centers": "centres", "theater": "theatre",
    "organize": "organise", "organized": "organised", "organization": "organisation", "organizations": "organisations",
    "recognize": "recognise", "realize": "realise", "apologize": "apologise", "analyze": "analyse",
    "prioritize": "prioritise", "minimize": "minimise", "utilize": "utilise", "defense": "defence",
    "offense": "offence", "catalog": "catalogue", "traveled": "travelled", "traveling": "travelling",
    "canceled": "cancelled", "canceling": "cancelling", "enrollment": "enrolment", "fulfill": "fulfil",
    "gray": "grey", "program": "programme", "programs": "programmes", "judgment": "judgement",
}
_US_WORD = re.compile(r"\b(" + "|".join(sorted(US_TO_UK, key=len, reverse=True)) + r")\b", re.I)
_COMPUTER_PROGRAM = re.compile(r"computer\s+$", re.I)


def _us_matches(text: str):
    for m in _US_WORD.finditer(text):
        if m.group(1).lower().startswith("program") and _COMPUTER_PROGRAM.search(text[max(0, m.start() - 12):m.start()]):
            continue  # a computer program is spelt so in British English too
        yield m


def _uk(word: str) -> str:
    uk = US_TO_UK[word.lower()]
    return uk.upper() if word.isupper() and len(word) > 1 else uk.capitalize() if word[0].isupper() else uk


def _fix_spelling(text):
    out, last = [], 0
    for m in _us_matches(text):
        out += [text[last:m.start()], _uk(m.group(1))]
        last = m.end()
    return "".join(out) + text[last:]


@_rule("en.british_spelling", "en", "英式串法", "British spelling", _fix_spelling)
def _check_spelling(text):
    return [(m.start(), m.end(), f"請用英式串法「{_uk(m.group(1))}」。", f"Use the British spelling “{_uk(m.group(1))}”.", True)
            for m in _us_matches(text)]


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_US_LETTER_DATE = re.compile(r"\b(" + "|".join(_MONTHS) + r")\s+(\d{1,2}),\s*(\d{4})\b")


@_rule("en.date_format", "en", "英文日期", "Date format (letters)",
       lambda t: _US_LETTER_DATE.sub(lambda m: f"{int(m.group(2))} {m.group(1)} {m.group(3)}", t))
def _check_en_date(text):
    return [(m.start(), m.end(), f"英文公函日期寫作「{int(m.group(2))} {m.group(1)} {m.group(3)}」。",
             f"Letters write dates as “{int(m.group(2))} {m.group(1)} {m.group(3)}”.", True)
            for m in _US_LETTER_DATE.finditer(text)]


# ---------------------------------------------------------------------------------------------
# Press releases (English and Chinese; the language is read from the text)

_EN_ENDS = re.compile(r"^\s*Ends(/[A-Z][a-z]+day, (" + "|".join(_MONTHS) + r") \d{1,2}, \d{4})?\s*$", re.M)
_EN_ENDS_VARIANT = re.compile(r"^\s*[-–—(]*\s*(?:ends?|the\s+end)\s*[-–—)]*\s*(/.*)?$", re.M | re.I)
_ZH_ENDS = re.compile(r"^\s*完\s*$", re.M)
_ZH_ENDS_VARIANT = re.compile(r"^\s*[-－—（(]*\s*完\s*[-－—）)]*\s*$", re.M)
_NNNN = re.compile(r"NNNN\s*\Z")
_EN_ISSUED = re.compile(r"^\s*Issued at HKT ([01]\d|2[0-3]):[0-5]\d\s*$", re.M)
_EN_ISSUED_ANY = re.compile(
    r"^\s*Issued\s+at\s+(?:HKT\s+)?(\d{1,2})[:.](\d{2})\s*(am|pm|a\.m\.|p\.m\.)?\s*(?:HKT|\(HKT\))?\s*$", re.M | re.I)
_ZH_ISSUED = re.compile(r"^\s*香港時間([01]?\d|2[0-3])時[0-5]\d分\s*$", re.M)
_ZH_ISSUED_ANY = re.compile(r"^\s*(?:香港時間|發出時間[:：]?)\s*(\d{1,2})\s*[:：時]\s*(\d{2})\s*分?\s*$", re.M)


def _fix_ends(text):
    zh = _mostly_chinese(text)
    good, variant, word = (_ZH_ENDS, _ZH_ENDS_VARIANT, "完") if zh else (_EN_ENDS, _EN_ENDS_VARIANT, "Ends")
    if not good.search(text):
        m = variant.search(text)
        if m:
            tail = "" if zh else (m.group(1) or "")
            text = text[:m.start()] + word + tail + text[m.end():]
        else:
            issued = (_ZH_ISSUED_ANY if zh else _EN_ISSUED_ANY).search(text)
            at = issued.start() if issued else len(text.rstrip().removesuffix("NNNN").rstrip())
            before = text[:at].rstrip("\n")
            text = before + "\n\n" + word + "\n" + text[at:].lstrip("\n")
    if not _NNNN.search(text):
        text = text.rstrip() + "\n\nNNNN\n"
    return text


@_rule("press.ends", "any", "新聞稿結尾", "Press release ending", _fix_ends)
def _check_ends(text):
    zh = _mostly_chinese(text)
    problems = []
    if not (_ZH_ENDS if zh else _EN_ENDS).search(text):
        problems.append((-1, -1, "新聞稿正文後應有「完」一行。" if zh else "新聞稿正文後應有「Ends」一行。",
                         "The release should end its text with a line 「完」." if zh else
                         "The release should end its text with an “Ends” line (Ends/Tuesday, December 1, 2026).", True))
    if not _NNNN.search(text):
        problems.append((len(text), len(text), "新聞稿最後一行應為「NNNN」。", "A press release ends with “NNNN”.", True))
    return problems


def _fix_issue_time(text):
    zh = _mostly_chinese(text)

    def repl(m):
        hour, minute = int(m.group(1)), m.group(2)
        if not zh:
            ampm = (m.group(3) or "").lower().replace(".", "")
            hour = hour % 12 + 12 if ampm == "pm" else hour % 12 if ampm == "am" else hour
            return f"Issued at HKT {hour:02d}:{minute}"
        return f"香港時間{hour}時{minute}分"

    good, anyform = (_ZH_ISSUED, _ZH_ISSUED_ANY) if zh else (_EN_ISSUED, _EN_ISSUED_ANY)
    return text if good.search(text) else anyform.sub(repl, text, count=1)


@_rule("press.issue_time", "any", "發出時間", "Issue time", _fix_issue_time)
def _check_issue_time(text):
    zh = _mostly_chinese(text)
    good, anyform = (_ZH_ISSUED, _ZH_ISSUED_ANY) if zh else (_EN_ISSUED, _EN_ISSUED_ANY)
    if good.search(text):
        return []
    m = anyform.search(text)
    if m:
        return [(m.start(), m.end(), "發出時間應寫作「香港時間17時47分」。" if zh else "發出時間應寫作「Issued at HKT 17:47」。",
                 "Write the issue time as 香港時間17時47分." if zh else "Write the issue time as “Issued at HKT 17:47”.", True)]
    return [(-1, -1, "缺少發出時間（香港時間）。", "The issue time (HKT) is missing.", False)]


_EN_TODAY = re.compile(r"\btoday\b(?!\s*\((" + "|".join(_MONTHS) + r") \d{1,2}\))", re.I)
_ZH_TODAY = re.compile(r"今日(?!（[一二三四五六七八九十]{1,3}月[一二三四五六七八九十]{1,3}日）)")
_EN_FOOTER_DATE = re.compile(r"^\s*Ends/[A-Z][a-z]+day, (" + "|".join(_MONTHS) + r") (\d{1,2}), \d{4}", re.M)
_ZH_FOOTER_DATE = re.compile(r"^\s*(\d{4})年(\d{1,2})月(\d{1,2})日", re.M)


def _lead(text: str) -> _Block | None:
    """The first paragraph after the headline."""
    blocks = [b for b in _blocks(text) if b.text.strip()]
    for b in blocks[1:]:
        if len(b.text.strip()) > 40:
            return b
    return None


def _fix_dateline(text):
    lead = _lead(text)
    if not lead:
        return text
    if _mostly_chinese(text):
        m = _ZH_FOOTER_DATE.search(text)
        if not m:
            return text
        new = _ZH_TODAY.sub(f"今日（{_zh_number(int(m.group(2)))}月{_zh_number(int(m.group(3)))}日）", lead.text)
    else:
        m = _EN_FOOTER_DATE.search(text)
        if not m:
            return text
        new = _EN_TODAY.sub(lambda t: f"{t.group(0)} ({m.group(1)} {int(m.group(2))})", lead.text)
    return text[:lead.start] + new + text[lead.end:]


@_rule("press.dateline", "any", "今日（日期）", "today (date)", _fix_dateline)
def _check_dateline(text):
    lead = _lead(text)
    if not lead:
        return []
    zh = _mostly_chinese(text)
    m = (_ZH_TODAY if zh else _EN_TODAY).search(lead.text)
    if not m:
        return []
    fixable = bool((_ZH_FOOTER_DATE if zh else _EN_FOOTER_DATE).search(text))
    s = lead.start + m.start()
    if zh:
        return [(s, s + len(m.group(0)), "「今日」後應以括號註明日期，例如「今日（十二月一日）」。",
                 "Write the date after 今日, e.g. 今日（十二月一日）.", fixable)]
    return [(s, s + len(m.group(0)), "「today」後應註明日期，例如「today (December 1)」。",
             "Follow “today” with the date, e.g. “today (December 1)”.", fixable)]
