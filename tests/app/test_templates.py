"""Templates as data: every shipped template loads, renders with its fields and passes its own
format rules; a broken template file is one clear error naming the file and the field."""

from __future__ import annotations

import pytest

from hkllm.app.format_check import check
from hkllm.app.templates import TemplateError, load_all, load_file, load_template, prompt, render

REQUIRED_KINDS = {"letter", "memo", "meeting_notice", "agenda", "minutes", "press_release"}

# Every shipped template carries an example for its fields (the form's greyed placeholders).
VALUES = {tid: t.example for tid, t in load_all().items()}
PARAGRAPHS = {
    "press_release_zh": ["康樂及文化事務署今日（十二月一日）宣布，將於明年一月九日在香港大會堂舉辦社區健康日，歡迎市民參加。",
                         "活動免費入場，詳情可瀏覽康文署網頁。"],
    "press_release_en": ["The Leisure and Cultural Services Department announced today (December 1) that a Community "
                         "Health Day will be held at the City Hall on January 9 next year.", "Admission is free."],
    "meeting_agenda": ["通過上次會議記錄", "灣仔區巴士路綫重組計劃", "其他事項"],
}
LETTER_PARAGRAPHS = ["你在二〇二六年十一月十日的來信收悉。", "本處已安排人員跟進有關事宜。", "如有查詢，請致電本處。"]


def test_every_kind_is_there_and_every_field_is_labelled():
    templates = load_all()
    assert set(templates) == set(VALUES)
    assert {t.kind for t in templates.values()} == REQUIRED_KINDS
    for t in templates.values():
        assert t.rules and t.label["zh"] and t.label["en"]
        assert all(f.label["zh"] and f.label["en"] and f.type for f in t.fields)


@pytest.mark.parametrize("template_id", sorted(VALUES))
def test_a_rendered_template_passes_its_own_rules(template_id):
    """Rendered from the template's own example values, which fill every required field."""
    t = load_template(template_id)
    text = render(t, VALUES[template_id], PARAGRAPHS.get(template_id, LETTER_PARAGRAPHS))
    assert check(text, t.rules) == [], text
    assert "{" not in text and "}" not in text
    assert prompt(t, VALUES[template_id])


def test_letter_layout():
    text = render(load_template("letter_reply"), VALUES["letter_reply"], LETTER_PARAGRAPHS)
    assert "本函檔號 Our Ref.：HAD WC/13/25/3\n" in text
    assert "來函檔號" not in text  # an empty optional line is left out
    assert "\n陳先生：\n" in text and "\n2.\t本處已安排" in text and "\n3.\t如有查詢" in text
    assert "灣仔民政事務專員\n（李小明代行）\n\n二〇二六年十二月一日" in text
    assert "副本送：食物環境衞生署署長（不連附件）\n　　　　地政總署署長（不連附件）" in text
    without = render(load_template("letter_reply"), dict(VALUES["letter_reply"], signed_for=""), LETTER_PARAGRAPHS)
    assert "代行" not in without


def test_press_footer_formats():
    text = render(load_template("press_release_en"), VALUES["press_release_en"], PARAGRAPHS["press_release_en"])
    assert text.endswith("Ends/Tuesday, December 1, 2026\nIssued at HKT 17:47\n\nNNNN\n")
    zh = render(load_template("press_release_zh"), VALUES["press_release_zh"], PARAGRAPHS["press_release_zh"])
    assert "完\n2026年12月1日（星期二）\n香港時間17時47分\n\nNNNN" in zh


def test_bad_values_are_clear():
    t = load_template("letter_reply")
    with pytest.raises(TemplateError, match="our_ref: required"):
        render(t, dict(VALUES["letter_reply"], our_ref=""), LETTER_PARAGRAPHS)
    with pytest.raises(TemplateError, match=r"date .*'1/12/2026' is not a date"):
        render(t, dict(VALUES["letter_reply"], date="1/12/2026"), LETTER_PARAGRAPHS)
    with pytest.raises(TemplateError, match="unknown template 'letter'"):
        load_template("letter")


GOOD = """id: sample
kind: letter
language: zh-hant
label: {zh: 樣本, en: Sample}
fields:
  - {name: our_ref, label: {zh: 本函檔號, en: Our reference}, type: text, required: true}
  - {name: received, label: {zh: 來信日期, en: Received}, type: date, required: false, example: "2026-11-10"}
skeleton: |
  本函檔號：{our_ref}
  {paragraphs}
rules: [zh.reference]
"""


@pytest.mark.parametrize("old, new, message", [
    ("type: text", "type: string", r"sample.yaml: fields.our_ref: type: 'string' is not one of"),
    ("required: true", "required: yes please", r"sample.yaml: fields.our_ref: required: must be true or false"),
    ("en: Our reference", "fr: x", r"sample.yaml: fields.our_ref: label: needs a label with both `zh` and `en`"),
    ("rules: [zh.reference]", "rules: [zh.referance]", r"sample.yaml: rules: 'zh.referance' is not a format-checker rule"),
    ("{our_ref}\n", "{our_rf}\n", r"sample.yaml: skeleton: \{our_rf\} is not a field"),
    ("  {paragraphs}\n", "", r"sample.yaml: skeleton: needs exactly one \{paragraphs\} slot"),
    ("id: sample", "id: other", r"sample.yaml: id: 'other' must match the file name"),
    ("kind: letter\n", "", r"sample.yaml: kind: missing"),
    ("kind: letter", "kind: letter\ncolour: red", r"sample.yaml: colour: unknown key"),
    ('example: "2026-11-10"', 'example: "10/11/2026"', r"sample.yaml: fields.received: example: '10/11/2026' is not a date"),
    ('example: "2026-11-10"', "example: 2026-11-10", r"sample.yaml: fields.received: example: must be text"),
    ("label: {zh: 樣本, en: Sample}", "label: {zh: 樣本, en: [Sample", r"sample.yaml: line \d+: not valid YAML"),
])
def test_a_broken_template_names_file_and_field(tmp_path, old, new, message):
    path = tmp_path / "sample.yaml"
    path.write_text(GOOD, encoding="utf-8")
    assert load_file(path).id == "sample"
    assert old in GOOD
    path.write_text(GOOD.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(TemplateError, match=message):
        load_file(path)
