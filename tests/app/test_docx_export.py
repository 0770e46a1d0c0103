"""Word export: a rendered letter and press release re-opened with python-docx keep their
paragraphs in order, with the layout of their kind (reference at the top right, signature block
right-aligned, headline bold and centred, 便箋 header table) and the East Asian font set."""

from __future__ import annotations

import io

import docx
import pytest
from docx.enum.text import WD_ALIGN_PARAGRAPH
from docx.oxml.ns import qn
from docx.shared import Cm

from hkllm.app.docx_export import export, guess_kind
from hkllm.app.templates import load_all, load_template, render
from tests.app.test_templates import LETTER_PARAGRAPHS, PARAGRAPHS, VALUES


def _open(data: bytes):
    assert data[:2] == b"PK"  # a zip: what Word and LibreOffice open
    return docx.Document(io.BytesIO(data))


def _texts(document) -> list[str]:
    return [p.text for p in document.paragraphs if p.text.strip()]


def _index(texts: list[str], needle: str) -> int:
    return next(i for i, t in enumerate(texts) if needle in t)


def _east_asia(rpr) -> str | None:
    fonts = rpr.find(qn("w:rFonts")) if rpr is not None else None
    return fonts.get(qn("w:eastAsia")) if fonts is not None else None


@pytest.fixture(scope="module")
def letter():
    t = load_template("letter_reply")
    text = render(t, VALUES["letter_reply"], LETTER_PARAGRAPHS)
    return text, _open(export(text, t))


def test_letter_paragraphs_in_order(letter):
    _, document = letter
    texts = _texts(document)
    order = ["本函檔號 Our Ref.：HAD WC/13/25/3", "香港灣仔", "陳大文先生", "陳先生：", "有關灣仔區行人路阻塞的投訴",
             "你在二〇二六年十一月十日的來信收悉。", "2.\t本處已安排人員跟進有關事宜。", "3.\t如有查詢", "灣仔民政事務專員",
             "（李小明代行）", "二〇二六年十二月一日", "副本送：食物環境衞生署署長", "地政總署署長"]
    assert [_index(texts, s) for s in order] == sorted(_index(texts, s) for s in order)
    # Nothing of the text was lost (whitespace aside).
    text, _ = letter
    assert "".join("".join(texts).split()) == "".join(text.split())


def test_letter_layout(letter):
    _, document = letter
    by_text = {p.text: p for p in document.paragraphs if p.text.strip()}
    assert by_text["（李小明代行）"].alignment == WD_ALIGN_PARAGRAPH.RIGHT
    assert by_text["灣仔民政事務專員"].alignment == WD_ALIGN_PARAGRAPH.RIGHT
    assert by_text["二〇二六年十二月一日"].alignment in (None, WD_ALIGN_PARAGRAPH.LEFT)
    assert by_text["本函檔號 Our Ref.：HAD WC/13/25/3"].paragraph_format.left_indent >= Cm(8)  # top right
    subject = by_text["有關灣仔區行人路阻塞的投訴"]
    assert subject.runs[0].bold and subject.alignment == WD_ALIGN_PARAGRAPH.CENTER
    numbered = by_text["2.\t本處已安排人員跟進有關事宜。"].paragraph_format
    assert numbered.first_line_indent < 0 < numbered.left_indent  # a hanging indent
    assert not any(r.bold for r in by_text["陳先生："].runs)


def test_east_asian_font_a4_and_properties(letter):
    _, document = letter
    assert _east_asia(document.styles["Normal"].element.rPr) == "PMingLiU"
    defaults = document.styles.element.find(f"{qn('w:docDefaults')}/{qn('w:rPrDefault')}/{qn('w:rPr')}")
    fonts = defaults.find(qn("w:rFonts"))
    assert fonts.get(qn("w:eastAsia")) == "PMingLiU" and fonts.get(qn("w:eastAsiaTheme")) is None
    assert all(_east_asia(r._r.rPr) == "PMingLiU" for p in document.paragraphs for r in p.runs)
    section = document.sections[0]
    assert abs(section.page_width - Cm(21)) < Cm(0.1) and abs(section.page_height - Cm(29.7)) < Cm(0.1)
    assert document.core_properties.title == "有關灣仔區行人路阻塞的投訴"


def test_press_release_en_headline_bold_centred_and_footer():
    t = load_template("press_release_en")
    text = render(t, VALUES["press_release_en"], PARAGRAPHS["press_release_en"])
    document = _open(export(text, "press_release_en"))
    paragraphs = [p for p in document.paragraphs if p.text.strip()]
    head = paragraphs[0]
    assert head.text == "LCSD to hold Community Health Day"
    assert head.alignment == WD_ALIGN_PARAGRAPH.CENTER and all(r.bold for r in head.runs)
    texts = [p.text for p in paragraphs]
    assert texts[1].startswith("The Leisure and Cultural Services Department announced today (December 1)")
    assert texts[-3:] == ["Ends/Tuesday, December 1, 2026", "Issued at HKT 17:47", "NNNN"]
    assert not any(r.bold for p in paragraphs[1:] for r in p.runs)
    lang = document.styles["Normal"].element.rPr.find(qn("w:lang"))
    assert lang.get(qn("w:val")) == "en-GB"


def test_press_release_zh_ends_line_centred():
    t = load_template("press_release_zh")
    document = _open(export(render(t, VALUES["press_release_zh"], PARAGRAPHS["press_release_zh"]), t))
    ends = next(p for p in document.paragraphs if p.text == "完")
    assert ends.alignment == WD_ALIGN_PARAGRAPH.CENTER


def test_memo_header_is_a_table():
    t = load_template("memo")
    document = _open(export(render(t, VALUES["memo"], LETTER_PARAGRAPHS), t))
    rows = [[c.text for c in row.cells] for row in document.tables[0].rows]
    assert rows[0] == ["由：", "總行政主任（人事）"] and ["致：", "各組主管"] in rows
    title = document.paragraphs[0]
    assert title.text == "便箋" and title.runs[0].bold and title.alignment == WD_ALIGN_PARAGRAPH.CENTER


@pytest.mark.parametrize("template_id", sorted(VALUES))
def test_every_template_exports_and_keeps_its_text(template_id, tmp_path):
    t = load_all()[template_id]
    text = render(t, VALUES[template_id], PARAGRAPHS.get(template_id, LETTER_PARAGRAPHS))
    path = tmp_path / "out.docx"
    assert export(text, t, path) is None
    document = docx.Document(str(path))
    cells = [c.text for table in document.tables for row in table.rows for c in row.cells]
    got = "".join(_texts(document) + cells)
    for line in text.split("\n"):  # every line is somewhere (the memo's labels are in its table)
        assert "".join(line.split("：")[-1].split()) in "".join(got.split())


def test_without_a_template_the_kind_is_guessed():
    t = load_template("letter_reply")
    text = render(t, VALUES["letter_reply"], LETTER_PARAGRAPHS)
    assert guess_kind(text) == "letter" and guess_kind("便箋\n\n由：甲") == "memo" and guess_kind("x\n\nNNNN") == \
        "press_release"
    document = _open(export(text))
    signature = next(p for p in document.paragraphs if "代行" in p.text)
    assert signature.alignment == WD_ALIGN_PARAGRAPH.RIGHT
    buffer = io.BytesIO()
    export("Plain text.\n\nSecond paragraph.", None, buffer)
    assert _texts(_open(buffer.getvalue())) == ["Plain text.", "Second paragraph."]
