"""The format checker on real-looking documents: a correct one passes every rule; a document that
breaks one convention fails that rule only; its fix (where one exists) makes every rule pass."""

from __future__ import annotations

import pytest

from hkllm.app.format_check import EN_LETTER_RULES, RULES, ZH_LETTER_RULES, UnknownRule, check, fix, zh_date

LETTER = """本函檔號 Our Ref.：HAD WC/13/25/3
來函檔號 Your Ref.：
電話 Tel.：2835 1234
傳真 Fax：2834 5678

香港灣仔
軒尼詩道130號
修頓中心20樓
陳大文先生

陳先生：

有關灣仔區行人路阻塞的投訴

　　你在二〇二六年十一月十日致本處的電郵收悉。

2.\t就你反映軒尼詩道近修頓球場一段行人路被雜物阻塞的情況，本處已聯同食物環境衞生署及地政總署人員於十一月十八日進行聯合巡查，並已移走有關雜物。

3.\t本處會繼續密切留意該處情況，並已安排沿綫加裝告示。如有查詢，請致電2835 1234與本處聯絡。

灣仔民政事務專員
（李小明代行）

二〇二六年十二月一日

副本送：食物環境衞生署署長（不連附件）
　　　　地政總署署長（不連附件）
"""

# (rule, text to replace, replacement): each breaks exactly one rule.
ZH_BREAKS = [
    ("zh.reference", "本函檔號 Our Ref.：HAD WC/13/25/3\n", "", False),
    ("zh.salutation", "陳先生：\n", "陳先生:\n", True),
    ("zh.salutation", "陳先生：\n", "陳先生\n", True),
    ("zh.numbering", "2.\t就你", "就你", True),
    ("zh.numbering", "3.\t本處會", "4.\t本處會", True),
    ("zh.numbering", "　　你在", "1.\t你在", True),
    ("zh.signature", "（李小明代行）", "(李小明代行)", True),
    ("zh.signature", "（李小明代行）", "代行：李小明", True),
    ("zh.signature", "灣仔民政事務專員\n（李小明代行）\n\n", "", False),
    ("zh.copy_to", "副本送：", "抄送：", True),
    ("zh.copy_to", "食物環境衞生署署長（不連附件）", "食物環境衞生署署長(不連附件)", True),
    ("zh.date", "二〇二六年十二月一日", "2026年12月1日", True),
    ("zh.date", "二〇二六年十一月十日", "10/11/2026", True),
    ("zh.date", "於十一月十八日", "於11月18日", True),
    ("zh.plain_style", "陳先生：\n", "陳先生：\n\n敬啟者：\n", True),
    ("zh.plain_style", "（李小明代行）\n", "（李小明代行）\n謹啟\n", True),
    ("zh.no_cantonese", "本處會繼續密切留意該處情況，並已安排沿綫加裝告示。", "我哋會繼續睇住嗰度，有咩嘢會再話你知㗎。", False),
    ("zh.no_simplified", "本處會繼續密切留意", "本处会继续密切留意", True),
    ("zh.hk_forms", "沿綫", "沿線", True),
]


def test_a_correct_letter_passes_every_rule():
    assert check(LETTER, ZH_LETTER_RULES) == []
    assert check(LETTER) == []  # the default: letter rules for the text's script


@pytest.mark.parametrize("rule, old, new, fixable", ZH_BREAKS)
def test_each_zh_rule_fails_alone_and_its_fix_passes(rule, old, new, fixable):
    assert old in LETTER
    broken = LETTER.replace(old, new, 1)
    failures = check(broken, ZH_LETTER_RULES)
    assert {f.rule for f in failures} == {rule}, failures
    f = failures[0]
    assert f.message_zh and f.message_en and f.fixable == fixable
    if f.line:  # a position that points at the problem
        assert broken.split("\n")[f.line - 1][f.column - 1:] != ""
    fixed = fix(broken, rule)
    if fixable:
        assert check(fixed, ZH_LETTER_RULES) == [], fixed
    else:
        assert fixed == broken or check(fixed, [rule])


def test_taiwan_forms_follow_context():
    assert check("本署已處理，裡面的線路已更換。", ["zh.hk_forms"])
    assert [f.message_en for f in check("本署已處理，裡面的線路已更換。", ["zh.hk_forms"])][0].startswith("「裡」")
    assert check("著名作家的著作", ["zh.hk_forms"]) == [] and check("着手", ["zh.hk_forms"]) == []  # 著名, 著作 keep 著
    assert fix("穿著制服的人員在裡面", "zh.hk_forms") == "穿着制服的人員在裏面"
    assert check("香港天文臺", ["zh.hk_forms"]) and fix("香港天文臺", "zh.hk_forms") == "香港天文台"


def test_simplified_is_found_and_traditional_homographs_are_not():
    assert check("政府今日宣布，皇后像廣場開放。", ["zh.no_simplified"]) == []  # 布, 后 are Traditional too
    failures = check("这是香港", ["zh.no_simplified"])
    assert [(f.line, f.column) for f in failures] == [(1, 1)]
    assert fix("网络线路", "zh.no_simplified") == "網絡綫路"


def test_chinese_numeral_dates():
    assert zh_date(2026, 12, 1) == "二〇二六年十二月一日"
    assert zh_date(2000, 7, 25) == "二〇〇〇年七月二十五日"
    assert fix("於2026年11月21日及3/1/2027", "zh.date") == "於二〇二六年十一月二十一日及二〇二七年一月三日"
    assert check("二零零零年七月二十五日", ["zh.date"]) == []  # 零 as in the CSB's letters


EN_LETTER = """Our Ref.: HAD WC/13/25/3

1 December 2026

Mr CHAN Tai-man
Flat A, 20/F, Southorn Centre
130 Hennessy Road
Wan Chai

Dear Mr Chan,

Obstruction of the footpath on Hennessy Road

Thank you for your email of 10 November 2026.

2. Staff of this Office, together with the Food and Environmental Hygiene Department, inspected the
footpath near Southorn Playground on 18 November and had the obstruction removed. The neighbourhood
will be checked again under our district programme.

3. Should you have any questions, please contact us on 2835 1234.

Yours sincerely,

(LEE Siu-ming)
for District Officer (Wan Chai)
"""


@pytest.mark.parametrize("rule, old, new, fixable", [
    ("en.salutation_closing", "Yours sincerely,", "Yours faithfully,", True),
    ("en.salutation_closing", "Dear Mr Chan,", "Dear Sir/Madam,", True),
    ("en.salutation_closing", "Yours sincerely,", "Yours truly,", True),
    ("en.british_spelling", "neighbourhood", "neighborhood", True),
    ("en.british_spelling", "district programme", "district program", True),
    ("en.date_format", "1 December 2026", "December 1, 2026", True),
])
def test_each_en_rule_fails_alone_and_its_fix_passes(rule, old, new, fixable):
    assert check(EN_LETTER, EN_LETTER_RULES) == []
    broken = EN_LETTER.replace(old, new, 1)
    assert {f.rule for f in check(broken, EN_LETTER_RULES)} == {rule}
    assert check(fix(broken, rule), EN_LETTER_RULES) == []


def test_british_spelling_keeps_case_and_computer_programs():
    assert fix("The Organization will Color the Center.", "en.british_spelling") == \
        "The Organisation will Colour the Centre."
    assert check("a computer program", ["en.british_spelling"]) == []


PRESS_EN = """LCSD to hold Community Health Day

The Leisure and Cultural Services Department (LCSD) announced today (December 1) that a Community Health
Day will be held at the Hong Kong City Hall on January 9 next year, with free health checks organised with
the Department of Health.

Admission is free. Details are available on the LCSD website.

Ends/Tuesday, December 1, 2026
Issued at HKT 17:47

NNNN
"""
PRESS_ZH = """康文署舉辦社區健康日

康樂及文化事務署今日（十二月一日）宣布，將於明年一月九日在香港大會堂舉辦社區健康日，並與衞生署合辦免費健康檢查，歡迎市民參加。

活動免費入場，詳情可瀏覽康文署網頁。

完
2026年12月1日（星期二）
香港時間17時47分

NNNN
"""
PRESS_RULES = ("press.dateline", "press.ends", "press.issue_time")


@pytest.mark.parametrize("doc, rule, old, new, fixable", [
    (PRESS_EN, "press.dateline", "today (December 1)", "today", True),
    (PRESS_EN, "press.ends", "Ends/Tuesday, December 1, 2026", "- END -", True),
    (PRESS_EN, "press.ends", "\nNNNN\n", "", True),
    (PRESS_EN, "press.issue_time", "Issued at HKT 17:47", "Issued at 5.47pm", True),
    (PRESS_EN, "press.issue_time", "Issued at HKT 17:47\n", "", False),
    (PRESS_ZH, "press.dateline", "今日（十二月一日）", "今日", True),
    (PRESS_ZH, "press.ends", "完\n", "-完-\n", True),
    (PRESS_ZH, "press.ends", "完\n", "", True),
    (PRESS_ZH, "press.issue_time", "香港時間17時47分", "香港時間17:47", True),
])
def test_press_release_rules(doc, rule, old, new, fixable):
    assert check(doc, PRESS_RULES) == []
    broken = doc.replace(old, new, 1)
    failures = check(broken, PRESS_RULES)
    assert {f.rule for f in failures} == {rule}
    assert all(f.fixable == fixable for f in failures)
    if fixable:
        assert check(fix(broken, rule), PRESS_RULES) == [], fix(broken, rule)


def test_memo_and_meeting_rules():
    memo = "便箋\n\n由：總行政主任（人事）\n致：各組主管\n本函檔號：ADM/1/2\n日期：二〇二六年十二月一日\n\n值班安排\n"
    assert check(memo, ["zh.memo_header"]) == []
    assert [f.message_en for f in check(memo.replace("致：各組主管\n", ""), ["zh.memo_header"])] == \
        ["The memo header lacks the To line (致：)."]
    notice = "日期：二〇二六年十二月十五日\n時間：下午二時三十分\n地點：修頓中心14樓會議室\n"
    assert check(notice, ["zh.meeting_details"]) == []
    assert len(check(notice.replace("地點：修頓中心14樓會議室\n", ""), ["zh.meeting_details"])) == 1


def test_unknown_rule_names_the_known_ones():
    with pytest.raises(UnknownRule, match="zh.salutation"):
        check("x", ["zh.salutaton"])
    assert all(r.title_zh and r.title_en for r in RULES.values())


def test_memo_paragraphs_are_numbered_from_the_second():
    memo = ("便箋\n\n由：總行政主任（人事）\n致：各組主管\n本函檔號：ADM/1/2\n日期：二〇二六年十二月一日\n\n"
            "聖誕假期值班安排\n\n　　各組請於十二月十日前提交值班表。\n\n2.\t值班人員須於當值日上午九時前報到。\n")
    assert check(memo, ["zh.numbering", "zh.memo_header", "zh.date"]) == []
    broken = memo.replace("2.\t值班", "值班")
    assert [f.rule for f in check(broken, ["zh.numbering"])] == ["zh.numbering"]
    assert fix(broken, "zh.numbering") == memo
