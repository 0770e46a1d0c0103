"""A rendered document (hkllm.app.templates.render, after any edits) as a Word .docx file.

    from hkllm.app.docx_export import export
    data = export(text, load_template("letter_reply"))          # bytes, for a download response
    export(text, "press_release_en", "release.docx")           # or a path / a file object

The layout is read from the text's lines and the template's `kind` (letter, memo, meeting_notice,
agenda, minutes, press_release), not from each YAML: blocks are the blank-line separated groups of
lines, the body is the run of prose and numbered paragraphs, and what comes before and after it is
laid out as that kind of document is:

- letter: the reference lines (本函檔號 Our Ref.…) at the top right, the address and 稱謂 on the left,
  the subject bold (centred in Chinese), numbered paragraphs with a hanging indent, the signature
  block (post and 「（姓名代行）」) right-aligned, the date and 副本送 lines on the left;
- memo: 便箋 bold and centred, the header lines (由/致/檔號/日期) as a two-column table, the subject bold;
- meeting papers: the committee and title lines bold and centred, the secretary's block right-aligned;
- press release: the headline bold and centred, 「完」 centred, "Ends/…" on its own line.

Text is A4 with 2.54 cm margins, Times New Roman for Latin text and PMingLiU (新細明體) for Chinese:
the East Asian font is set in w:rFonts/@w:eastAsia on the document defaults, the Normal style and
every run, since Word picks the font for CJK characters from that attribute only. Without a
template the kind is guessed from the text (便箋, NNNN, 本函檔號…).
"""

from __future__ import annotations

import datetime as dt
import io
import re
from pathlib import Path

EAST_ASIA_FONT = "PMingLiU"  # 新細明體: on every Hong Kong Government Windows desktop
LATIN_FONT = "Times New Roman"
FONT_SIZE_PT = 12

_SENTENCE_END = tuple("。！？」』；.!?\"”")
_NUMBERED = re.compile(r"^(\s*)(\d+)\s*[.．]\s*")
_LABEL = re.compile(r"^\s*([^：:\n]{1,24}?)\s*[：:]\s*(\S.*)$")  # "label：value"; "陳先生：" is a salutation
_COPIES = re.compile(r"^\s*(副本送|副本抄送|抄送|副本|附件|c\.?c\.?|Copy to|Encl\.?)", re.I)
_SALUTATION = re.compile(r"^\s*(Dear\s.+|.{1,20}[：:]|敬啟者|敬啓者)\s*$")
_ZH_ENDS = re.compile(r"^\s*完\s*$")
_EN_ENDS = re.compile(r"^\s*Ends\b")
_DATE_LINE = re.compile(r"^\s*(\d{1,2}\s+[A-Z][a-z]+\s+\d{4}|[〇零一二三四五六七八九]{4}年[^\n]{2,8}日|\d{4}年\d{1,2}月\d{1,2}日\S*)\s*$")
_TOP_TITLES = ("agenda", "minutes", "meeting_notice")


def _blocks(text: str) -> list[list[str]]:
    """Blank-line separated groups of lines (leading full-width spaces kept: they are indents)."""
    blocks, current = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def _is_body(block: list[str]) -> bool:
    return bool(_NUMBERED.match(block[0])) or block[0].startswith("\u3000\u3000") or \
        block[-1].rstrip().endswith(_SENTENCE_END)


def _is_labels(block: list[str]) -> bool:
    """Header fields: every line "label：value", or a continuation indented under the one above."""
    return bool(_LABEL.match(block[0])) and not _COPIES.match(block[0]) and \
        all(_LABEL.match(ln) or ln.startswith(("\u3000", " ")) for ln in block)


def guess_kind(text: str) -> str:
    """A template kind for a text without one: memo, press_release, letter, minutes, agenda, or
    "document" (laid out as plain paragraphs)."""
    head = text.lstrip()[:200]
    if head.startswith("便箋") or re.match(r"\s*memo", head, re.I):
        return "memo"
    if re.search(r"NNNN\s*\Z", text):
        return "press_release"
    if re.search(r"本函檔號|Our Ref|^\s*Dear\s", text, re.M):
        return "letter"
    if "會議記錄" in head:
        return "minutes"
    if "議事日程" in head:
        return "agenda"
    return "document"


# ---------------------------------------------------------------------------------------------
# python-docx helpers


def _set_fonts(rpr, east_asia: str, latin: str, size_pt: int | None = None) -> None:
    """Explicit fonts on a w:rPr (of the defaults, a style or a run): theme fonts dropped so that
    ours win."""
    from docx.oxml.ns import qn
    from docx.shared import Pt

    fonts = rpr.get_or_add_rFonts()
    for theme in ("w:asciiTheme", "w:hAnsiTheme", "w:eastAsiaTheme", "w:cstheme"):
        fonts.attrib.pop(qn(theme), None)
    for attr, font in (("w:ascii", latin), ("w:hAnsi", latin), ("w:cs", latin), ("w:eastAsia", east_asia)):
        fonts.set(qn(attr), font)
    if size_pt:
        rpr.sz_val = Pt(size_pt)
        size_cs = rpr.find(qn("w:szCs"))
        if size_cs is not None:
            size_cs.set(qn("w:val"), str(size_pt * 2))


def _set_language(rpr, language: str) -> None:
    """w:lang on a w:rPr: spelling and line breaking in Word follow it."""
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    lang = rpr.find(qn("w:lang"))
    if lang is None:
        lang = OxmlElement("w:lang")
        rpr.append(lang)  # w:lang comes after w:rFonts and w:sz in the schema's order
    lang.set(qn("w:val"), "en-GB" if language == "en" else "zh-HK")
    lang.set(qn("w:eastAsia"), "zh-HK")
    lang.attrib.pop(qn("w:bidi"), None)


def _new_document(language: str, east_asia: str, latin: str):
    import docx
    from docx.oxml.ns import qn
    from docx.shared import Cm, Pt

    document = docx.Document()
    # Document defaults (python-docx's template names theme fonts there) and the Normal style.
    rpr_default = document.styles.element.find(f"{qn('w:docDefaults')}/{qn('w:rPrDefault')}/{qn('w:rPr')}")
    if rpr_default is not None:
        _set_fonts(rpr_default, east_asia, latin, FONT_SIZE_PT)
        _set_language(rpr_default, language)
    normal = document.styles["Normal"]
    _set_fonts(normal.element.get_or_add_rPr(), east_asia, latin, FONT_SIZE_PT)
    _set_language(normal.element.get_or_add_rPr(), language)
    fmt = normal.paragraph_format
    fmt.space_before, fmt.space_after, fmt.line_spacing = Pt(0), Pt(0), 1.15
    for section in document.sections:
        section.page_width, section.page_height = Cm(21.0), Cm(29.7)  # A4
        section.top_margin = section.bottom_margin = Cm(2.54)
        section.left_margin = section.right_margin = Cm(2.54)
    return document


class _Writer:
    def __init__(self, document, east_asia: str, latin: str):
        self.document, self.east_asia, self.latin = document, east_asia, latin

    def run(self, paragraph, text: str, bold: bool = False, underline: bool = False):
        r = paragraph.add_run(text)  # python-docx turns \t into w:tab and \n into w:br
        r.bold = bold or None
        r.underline = underline or None
        _set_fonts(r._r.get_or_add_rPr(), self.east_asia, self.latin)
        return r

    def paragraph(self, text: str, align=None, bold=False, underline=False, after_pt: float = 12,
                  left_indent_cm: float | None = None, hanging_cm: float | None = None):
        from docx.shared import Cm, Pt

        p = self.document.add_paragraph()
        self.run(p, text, bold, underline)
        fmt = p.paragraph_format
        if align is not None:
            fmt.alignment = align
        fmt.space_after = Pt(after_pt)
        if left_indent_cm is not None:
            fmt.left_indent = Cm(left_indent_cm)
        if hanging_cm:
            fmt.first_line_indent = Cm(-hanging_cm)
            fmt.tab_stops.add_tab_stop(Cm(left_indent_cm or hanging_cm))
        return p

    def lines(self, block: list[str], **kwargs):
        """One paragraph per line (each can be edited on its own in Word); space after the last."""
        after = kwargs.pop("after_pt", 12)
        return [self.paragraph(line, after_pt=after if i == len(block) - 1 else 0, **kwargs)
                for i, line in enumerate(block)]

    def header_table(self, block: list[str]):
        """The 便箋 header: a borderless two-column table, label | value (continuations joined)."""
        from docx.shared import Cm, Pt

        rows: list[list[str]] = []
        for line in block:
            m = _LABEL.match(line)
            if m and not line.startswith(("\u3000", " ")):
                rows.append([m.group(1), m.group(2)])
            elif rows:
                rows[-1][1] += "\n" + line.strip()
        table = self.document.add_table(rows=0, cols=2)
        table.autofit = False
        for label, value in rows:
            cells = table.add_row().cells
            for cell, text, bold, width in ((cells[0], label + ("：" if re.search(r"[^\x00-\x7f]", label) else ":"),
                                             True, 4.0), (cells[1], value, False, 11.9)):
                cell.width = Cm(width)
                self.run(cell.paragraphs[0], text, bold=bold)
        self.document.add_paragraph().paragraph_format.space_after = Pt(6)
        return table


# ---------------------------------------------------------------------------------------------
# Layout


def _template(template):
    if template is None or not isinstance(template, str):
        return template
    from hkllm.app.templates import load_template

    return load_template(template)


def _is_subject(block: list[str]) -> bool:
    """A subject line: one short line that is not a sentence, a number or a header field."""
    line = block[0].strip()
    return len(block) == 1 and len(line) <= 80 and not line.endswith(tuple("。！？.!?")) and \
        not _NUMBERED.match(line) and not _is_labels(block) and not _SALUTATION.match(line)


def _structure(blocks: list[list[str]], kind: str) -> tuple[int, int, int | None]:
    """(start, end, subject): the body is blocks[start:end], the first run of prose and numbered
    blocks (after the salutation and subject in a letter, after the headline in a press release);
    `subject` is the index of the subject line, if any."""
    first, subject = (1 if kind == "press_release" and len(blocks) > 1 else 0), None
    if kind == "letter":
        sal = next((i for i, b in enumerate(blocks) if len(b) == 1 and _SALUTATION.match(b[0])), None)
        if sal is not None:
            first = sal + 1
            if first < len(blocks) and _is_subject(blocks[first]):  # a subject may end in 」, like a sentence
                subject, first = first, first + 1
    start = next((i for i in range(first, len(blocks)) if _is_body(blocks[i]) and not _is_labels(blocks[i])),
                 len(blocks))
    end = start
    while end < len(blocks) and _is_body(blocks[end]) and not _COPIES.match(blocks[end][0]):
        end += 1
    if subject is None and kind in ("letter", "memo", "document") and start > 0 and _is_subject(blocks[start - 1]) \
            and not (kind == "memo" and start - 1 == 0):
        subject = start - 1
    return start, end, subject


def layout(text: str, kind: str, language: str, w: _Writer) -> str:
    """Write `text` into the document as a `kind`; the title for the file's properties."""
    from docx.enum.text import WD_ALIGN_PARAGRAPH as ALIGN

    zh = language != "en"
    blocks = _blocks(text)
    start, end, subject = _structure(blocks, kind)
    title = ""
    reference_done = False

    # Before the body.
    for i, block in enumerate(blocks[:start]):
        if kind == "press_release" and i == 0:
            title = " ".join(s.strip() for s in block)
            w.lines(block, align=ALIGN.CENTER, bold=True, after_pt=18)
        elif i == subject:
            title = block[0].strip()
            w.paragraph(block[0].strip(), align=ALIGN.CENTER if zh else None, bold=True, underline=not zh)
        elif _is_labels(block) and kind == "memo":
            w.header_table(block)
        elif _is_labels(block) and kind == "letter" and not reference_done:
            # The reference block sits on the right half, its lines aligned on the left.
            w.lines([s.strip() for s in block], left_indent_cm=9.0, after_pt=18)
            reference_done = True
        elif (kind in _TOP_TITLES or (kind == "memo" and i == 0)) and not _is_labels(block):
            title = title or " ".join(s.strip() for s in block)
            w.lines([s.strip() for s in block], align=ALIGN.CENTER, bold=True)
        else:
            w.lines(block)

    # The body: numbered paragraphs with a hanging indent; Chinese justified.
    for block in blocks[start:end]:
        m = _NUMBERED.match(block[0])
        body = "\n".join(s if i == 0 else s.strip() for i, s in enumerate(block))
        align = ALIGN.JUSTIFY if zh else None
        if m:
            body = _NUMBERED.sub(lambda m: f"{m.group(2)}.\t", body, count=1)
            w.paragraph(body, align=align, left_indent_cm=1.27, hanging_cm=1.27)
        else:
            w.paragraph(body, align=align)

    # After the body: the first block that is not labels or copies is the signature (right-aligned,
    # with its 代行 line) in letters, memos and meeting papers.
    signed = kind in ("press_release", "agenda", "document")
    closing = False  # an English "Yours sincerely," block: the name and post under it go right too
    for block in blocks[end:]:
        if kind == "press_release":
            for j, line in enumerate(block):
                last = j == len(block) - 1
                if _ZH_ENDS.match(line):
                    w.paragraph(line.strip(), align=ALIGN.CENTER, after_pt=0 if not last else 12)
                else:
                    w.paragraph(line.strip(), after_pt=12 if last or _EN_ENDS.match(line) else 0)
        elif _COPIES.match(block[0]) or _is_labels(block):
            w.lines(block)
        elif len(block) == 1 and _DATE_LINE.match(block[0]):
            w.lines(block)
            closing = False
        elif not signed or closing or any("代行" in s for s in block):
            w.lines([s.strip() for s in block], align=ALIGN.RIGHT)
            closing = closing or (not signed and bool(re.match(r"\s*Yours\b", block[0])))
            signed = True
        else:
            w.lines(block)
    return title


def export(document_text: str, template=None, out=None, *, east_asia_font: str = EAST_ASIA_FONT,
           latin_font: str = LATIN_FONT) -> bytes | None:
    """Write `document_text` as a .docx laid out as `template` (a Template, a template id, or None
    to guess the kind from the text). `out`: a path or a binary file object to save to (returns
    None), or None to return the file's bytes."""
    t = _template(template)
    if t is not None:
        kind, language = t.kind, ("en" if t.language == "en" else "zh")
    else:
        from hkllm.text import detect

        kind, language = guess_kind(document_text), ("en" if detect(document_text).variety == "en" else "zh")
    document = _new_document(language, east_asia_font, latin_font)
    title = layout(document_text, kind, language, _Writer(document, east_asia_font, latin_font))
    props = document.core_properties
    props.title = title[:200]
    props.author = props.last_modified_by = "港文通 (hkllm)"
    props.language = "en-GB" if language == "en" else "zh-HK"
    props.created = props.modified = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    props.revision = 1
    if out is None:
        buffer = io.BytesIO()
        document.save(buffer)
        return buffer.getvalue()
    document.save(str(out) if isinstance(out, Path) else out)
    return None
