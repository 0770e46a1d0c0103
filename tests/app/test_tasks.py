"""The five document-assistant tasks: message builders in the output's language, a drafted letter
assembled and format-checked, Cantonese left in a rewrite flagged, translation pairs validated, a
map-reduce summary whose every call fits a small context, and answers whose [n] citations and
quotations are checked against the passages the prompt gave."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hkllm.app import tasks
from hkllm.app.retrieval import Library
from hkllm.app.templates import TemplateError, load_template
from tests.app.test_templates import VALUES

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "data/app/docs"

GOOD_ANSWER = ("1. 你在二〇二六年十一月十日的來信收悉。\n\n2. 本處已派員巡查，並已移走行人路上的雜物。\n\n"
               "3. 如有查詢，請致電本處。")


def _roles(messages):
    assert all(set(m) == {"role", "content"} and m["content"].strip() for m in messages)
    return [m["role"] for m in messages]


# ---------------------------------------------------------------------------------------------
# Draft


def test_draft_uses_the_template_prompt_in_its_language():
    msgs = tasks.draft("letter_reply", VALUES["letter_reply"])
    assert _roles(msgs) == ["system", "user"]
    assert "只寫正文段落" in msgs[0]["content"]
    user = msgs[1]["content"]
    assert "二〇二六年十一月十日" in user and "已巡查並移走雜物" in user  # placeholders filled
    assert "有關灣仔區行人路阻塞的投訴" in user  # the subject, which the prompt does not name

    en = tasks.draft("press_release_en", VALUES["press_release_en"])
    assert "British English" in en[0]["content"]
    assert "The Leisure and Cultural Services Department today (December 1)" in en[1]["content"]


def test_draft_without_a_template_prompt_lists_the_facts():
    memo = dataclasses.replace(load_template("memo"), prompt={})
    user = tasks.draft(memo, VALUES["memo"])[1]["content"]
    assert user.startswith("撰寫便箋的正文")
    assert "- 致（受文人職銜）：各組主管" in user and "- 日期：二〇二六年十二月一日" in user
    assert "來函檔號" not in user  # empty optional fields are left out


def test_draft_needs_the_required_fields():
    with pytest.raises(TemplateError, match="received"):
        tasks.draft("letter_reply", {k: v for k, v in VALUES["letter_reply"].items() if k != "received"})


def test_assemble_draft_strips_model_numbering_and_passes_the_rules():
    doc = tasks.assemble_draft("letter_reply", VALUES["letter_reply"], GOOD_ANSWER)
    assert doc["paragraphs"][0] == "你在二〇二六年十一月十日的來信收悉。"
    assert "\u3000\u3000你在二〇二六年十一月十日的來信收悉。\n\n2.\t本處已派員巡查" in doc["text"]
    assert "1." not in doc["text"]
    assert doc["failures"] == []


def test_assemble_draft_reports_failures_as_dicts():
    answer = "敬啟者：\n\n我哋已經派人去睇過，啲雜物已經清走咗。\n\n此致"
    doc = tasks.assemble_draft("letter_reply", VALUES["letter_reply"], answer)
    assert doc["paragraphs"] == ["我哋已經派人去睇過，啲雜物已經清走咗。"]  # 敬啟者/此致 dropped
    rules = {f["rule"] for f in doc["failures"]}
    assert "zh.no_cantonese" in rules
    f = next(f for f in doc["failures"] if f["rule"] == "zh.no_cantonese")
    assert set(f) >= {"rule", "message_zh", "message_en", "line", "fixable"}
    assert f["line"] > 0 and "粵語" in f["message_zh"] and f["fixable"] is False


def test_split_paragraphs_handles_lines_bullets_and_the_subject():
    assert tasks.split_paragraphs("```\n一、甲。\n二、乙。\n```") == ["甲。", "乙。"]
    assert tasks.split_paragraphs("陳先生：\n\n（1）第一段。\n第一段續。\n\n- 第二段。", drop=["陳先生"]) == \
        ["第一段。第一段續。", "第二段。"]
    assert tasks.split_paragraphs("Dear Sir,\n\nFirst line\nsecond line.\n\nYours faithfully,") == \
        ["First line second line."]


# ---------------------------------------------------------------------------------------------
# Rewrite


@pytest.mark.parametrize("mode", tasks.REWRITE_MODES)
def test_rewrite_messages_for_every_mode(mode):
    msgs = tasks.rewrite("我哋聽日會派人去睇下。", mode)
    assert _roles(msgs) == ["system", "user"]
    assert msgs[1]["content"].endswith("我哋聽日會派人去睇下。")
    assert "只輸出改寫後的文字" in msgs[1]["content"]


def test_rewrite_english_text_gets_english_instructions():
    msgs = tasks.rewrite("Pls come to our office to sort this out asap.", "polite")
    assert "courteous" in msgs[1]["content"]
    with pytest.raises(ValueError, match="modes: yue_to_written, plain, formal, polite"):
        tasks.rewrite("text", "shout")


def test_check_rewrite_flags_cantonese_left_in_the_answer():
    source = "我哋聽日會派人去睇下，你唔使擔心。"
    bad = tasks.check_rewrite(source, "我哋聽日會派人去睇下。", "yue_to_written")
    assert bad["ok"] is False and bad["answer_variety"] == "yue"
    assert [w["code"] for w in bad["warnings"]] == ["still_cantonese"]
    good = tasks.check_rewrite(source, "本處明日會派員視察，請你放心。", "yue_to_written")
    assert good == {"ok": True, "source_variety": "yue", "answer_variety": "zh-hant", "warnings": []}
    already = tasks.check_rewrite("本處明日會派員視察。", "本處明日會派員視察。", "yue_to_written")
    assert already["ok"] is True and [w["code"] for w in already["warnings"]] == ["not_cantonese"]


# ---------------------------------------------------------------------------------------------
# Translate


@pytest.mark.parametrize("source,target", [(s, t) for s in tasks.LANGUAGES for t in tasks.LANGUAGES if s != t])
def test_translate_six_directions(source, target):
    msgs = tasks.translate("一段文字 some text", source, target)
    user = msgs[1]["content"]
    assert user.endswith("一段文字 some text")
    if target == "en":
        assert user.startswith("Translate the following")
    else:
        assert user.startswith("把以下") and ("粵語口語" in user if target == "yue" else "規範書面語" in user)


def test_translate_auto_detects_and_rejects_bad_pairs():
    assert tasks.resolve_languages("我哋聽日開會。", "auto", "en") == ("yue", "en")
    assert tasks.resolve_languages("会议改于下午三时举行。", "auto", "en") == ("zh-hant", "en")
    assert "會議改於" in tasks.translate("会议改于下午三时举行。", "auto", "en")[1]["content"]  # HK forms
    with pytest.raises(ValueError, match="both en"):
        tasks.translate("The meeting is at three.", "auto", "en")
    with pytest.raises(ValueError, match="unknown target language 'fr'"):
        tasks.translate("text", "en", "fr")
    with pytest.raises(ValueError, match="unknown source language 'zh-hans'"):
        tasks.translate("text", "zh-hans", "en")
    assert tasks.check_translation("The meeting is at three.", "en") == []
    assert tasks.check_translation("會議於三時舉行。", "en")[0]["code"] == "wrong_language"


# ---------------------------------------------------------------------------------------------
# Summarize


def _long_text() -> str:
    return "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*zh-hant.txt")))


def test_summarize_map_reduce_fits_every_call_in_a_small_context():
    text = _long_text()
    context, answer = 400, 100
    calls = []

    def complete(messages):
        calls.append(messages)
        assert tasks.messages_tokens(messages) + answer <= context  # every chunk and every reduce fits
        return "本部分說明有關安排，包括日期、費用及查詢電話，市民須按指示辦理。" * 2

    out = tasks.summarize(text, complete, context_tokens=context, answer_tokens=answer)
    assert out["rounds"] >= 3 and out["chunks"] >= 4
    assert out["summary"].startswith("本部分說明")
    maps = [m for m in calls if "部分（共" in m[1]["content"]]
    assert len(maps) == out["chunks"]
    # The chunks together are the whole text: nothing dropped.
    chunks = tasks.split_for_summary(text, context, answer_tokens=answer)
    assert "".join("".join(c.split()) for c in chunks) == "".join(text.split())
    assert "合併成一段連貫的摘要" in calls[-1][1]["content"]


def test_summarize_short_text_is_one_call_and_prepare_exposes_the_last_call():
    calls = []
    out = tasks.summarize("會議改於下午三時舉行。", lambda m: calls.append(m) or "會議改期。")
    assert out == {"summary": "會議改期。", "chunks": 1, "rounds": 1} and len(calls) == 1
    plan = tasks.prepare_summary(_long_text(), lambda m: "摘要。", context_tokens=512, answer_tokens=128)
    assert plan["rounds"] >= 2 and plan["messages"] == tasks.summary_messages(plan["partials"], "zh")
    en = tasks.chunk_summary_messages("The pool closes at ten.", 2, 3, "en")
    assert "part 2 of 3" in en[1]["content"]


def test_summarize_with_a_custom_token_counter_and_no_room():
    chunks = tasks.split_for_summary("a" * 5000, context_tokens=300, count_tokens=len, answer_tokens=50, language="en")
    assert len(chunks) > 1 and "".join("".join(chunks).split()) == "a" * 5000
    assert all(tasks.messages_tokens(tasks.chunk_summary_messages(c, i, len(chunks), "en"), len) + 50 <= 300
               for i, c in enumerate(chunks, 1))
    with pytest.raises(ValueError, match="no room"):
        tasks.summarize("文字。" * 100, lambda m: "", context_tokens=60, answer_tokens=50)


# ---------------------------------------------------------------------------------------------
# Ask


@pytest.fixture(scope="module")
def library():
    lib = Library(":memory:")
    for path in sorted(DOCS.glob("*.txt")):
        lib.add_file(path, owner="key-1")
    yield lib
    lib.close()


def test_ask_numbers_the_passages_and_asks_for_citations(library):
    msgs, hits = tasks.ask(library, "key-1", "圖書證可以借幾多本書？", k=3)
    assert 1 <= len(hits) <= 3 and [h.n for h in hits] == list(range(1, len(hits) + 1))
    assert hits[0].doc_name == "faq_library_booking_yue.txt"
    assert "[n]" in msgs[0]["content"] and "「」" in msgs[0]["content"]
    for h in hits:
        assert f"[{h.n}] {h.text}" in msgs[1]["content"]
    assert msgs[1]["content"].endswith("問題：圖書證可以借幾多本書？")
    assert tasks.ask(library, "someone-else", "圖書證可以借幾多本書？")[1] == []  # owners' documents only


def test_ask_keeps_the_prompt_inside_the_context(library):
    msgs, hits = tasks.ask(library, "key-1", "暴雨警告 圖書館 泳池 流感疫苗", k=4, context_tokens=600, answer_tokens=200)
    assert hits and tasks.messages_tokens(msgs) + 200 <= 600
    en_msgs, en_hits = tasks.ask(library, "key-1", "How do I pay the water bill?", k=2, context_tokens=None)
    assert "Answer only from the passages" in en_msgs[0]["content"] and len(en_hits) == 2


def test_check_citations_verifies_quotes_and_flags_unknown_numbers(library):
    _, hits = tasks.ask(library, "key-1", "圖書證可以借幾多本書？", k=3)
    answer = ("每張圖書證最多可借八項資料，「借期係二十一日」[1]。罰款上限為「每項資料五百元」[1]。"
              "另見[9]。")
    cites = tasks.check_citations(answer, hits)
    assert [c["n"] for c in cites] == [1, 1, 9]
    assert cites[0]["passage_id"] == hits[0].id and cites[0]["exists"] is True
    assert cites[0]["quotes"] == [{"text": "借期係二十一日", "verified": True}]
    assert cites[1]["quotes"] == [{"text": "每項資料五百元", "verified": False}]
    assert cites[2]["exists"] is False and cites[2]["passage_id"] is None
    assert answer[cites[2]["start"]:cites[2]["end"]] == "[9]"


def test_check_citations_sentence_rules():
    passages = ["圖書館會暫停開放。", "泳池下午六時關閉。"]
    # A quotation belongs to the next citation in its sentence, else the one before it; a 。 inside
    # 「」 does not end the sentence; [2] [1] after the 。 still belong to the sentence before.
    cites = tasks.check_citations("根據[1]，「圖書館會暫停開放。」\n另外「泳池下午六時關閉」。[2] [1]", passages)
    assert [(c["n"], c["quotes"]) for c in cites] == [
        (1, [{"text": "圖書館會暫停開放。", "verified": True}]),
        (2, [{"text": "泳池下午六時關閉", "verified": True}]),
        (1, [{"text": "泳池下午六時關閉", "verified": False}]),
    ]
    en = tasks.check_citations('The pool closes at "six in the evening" [1, 2].', ["It closes at six in the evening."])
    assert [(c["n"], c["exists"], c["quotes"][0]["verified"]) for c in en] == [(1, True, True), (2, False, False)]
