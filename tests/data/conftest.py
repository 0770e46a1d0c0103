"""A small corpus with one of everything a recipe can read, and its known traps."""

import json
from pathlib import Path

import pytest

CANTONESE = ("我哋今日去咗旺角食嘢，仲行咗好耐街。個個都話好開心，聽日再約過。"
             "阿明話佢想去睇戲，不過阿芳琴日已經睇咗，所以佢哋決定去飲茶。")
SWC = ("本署謹此通知，上述道路將於下星期一起暫時封閉，以便進行維修工程。"
       "工程期間，市民應改用其他路線，並留意現場交通標誌及警務人員的指示。")
ENGLISH = ("The library will be closed on public holidays. Please return borrowed items before the due date, "
           "or renew them online through the library catalogue.")
LONG_YUE = ("你知唔知點解啲巴士成日遲到？我諗係因為塞車，尤其係放工時間，喺彌敦道成條路都塞晒，"
            "架架車都唔郁，司機都冇辦法。我哋不如搭港鐵啦，快啲又準時，仲可以喺車廂度睇吓書。"
            "不過港鐵繁忙時間好逼，有時要等兩三班車先上到，返到公司都成身汗。"
            "所以我而家早半個鐘出門口，寧願喺公司附近飲杯咖啡先返工。")
GUIDE_SWC = "申請人須親身前往任何一間辦事處遞交表格，並出示身份證明文件正本及住址證明。"
GUIDE_EN = "Applicants must bring the completed form, proof of identity and proof of address to any office."
CONTAMINATED = "題目：香港有幾多個區議會分區？答案係十八個。呢條題目喺評估集入面出現過，唔應該用嚟訓練。"


def write_jsonl(path: Path, records) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    near_duplicate = LONG_YUE[:50] + "，" + LONG_YUE[51:]
    write_jsonl(root / "docs.jsonl", [
        {"text": CANTONESE + " 有事打 9123 4567 搵我。"},
        {"text": SWC},
        {"text": ENGLISH},
        '{"text": "broken json',                      # line 4: malformed
        {"body": "no text field here"},               # line 5: missing field
        {"text": CANTONESE + " 有事打 9123 4567 搵我。"},  # exact duplicate of line 1
        {"text": LONG_YUE},
        {"text": near_duplicate},                     # near duplicate of line 7
        {"text": CONTAMINATED},
        {"text": "短"},                                # too short
    ])
    (root / "tables").mkdir()
    (root / "tables" / "districts.csv").write_text(
        "name_zh,region_zh,population\n觀塘區,九龍,673166\n沙田區,新界,692806\n中西區,香港島,235953\n", encoding="utf-8")
    (root / "html").mkdir()
    (root / "html" / "notice.html").write_text(
        "<html><head><title>通告</title></head><body><nav><a href='/'>主頁</a> | <a href='/a'>關於我們</a> | "
        "<a href='/c'>聯絡我們 NAVLINK</a></nav><article><h1>颱風警告安排</h1>"
        "<p>天文台預測熱帶氣旋會在未來數小時內進一步靠近本港。</p>"
        "<p>八號烈風或暴風信號生效期間，所有辦事處及服務暫停，市民應留在安全地方。</p>"
        "<p>信號除下後兩小時內，各辦事處會盡快恢復服務，詳情請留意電台及電視廣播。</p>"
        "</article><footer>版權所有 FOOTERTEXT 2026 | 私隱政策</footer></body></html>", encoding="utf-8")
    (root / "pdf").mkdir()
    make_pdf(root / "pdf" / "pledge.pdf", ["本部門會在三個工作天內回覆查詢，並在十個工作天內完成審批申請。",
                                           "We reply to enquiries within three working days."])
    (root / "text").mkdir()
    (root / "text" / "guide.txt").write_text(GUIDE_SWC + "\n\n" + GUIDE_EN, encoding="utf-8")
    replay = ["Python is a programming language that lets you work quickly and integrate systems effectively.",
              "A list is a mutable sequence, typically used to store collections of homogeneous items.",
              "The for statement is used to iterate over the elements of a sequence such as a string or list.",
              "Exceptions are raised when errors are detected and can be handled by try statements.",
              "A dictionary maps hashable keys to arbitrary values and preserves insertion order.",
              "Modules are files containing definitions and statements that can be imported elsewhere."]
    write_jsonl(root / "replay.jsonl", [{"text": t} for t in replay])
    write_jsonl(root / "eval.jsonl", [{"question": "香港有幾多個區議會分區？答案係十八個", "answer": "十八"}])
    return root


def make_pdf(path: Path, lines: list[str]) -> None:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("MSung-Light"))
    c = canvas.Canvas(str(path))
    c.setFont("MSung-Light", 11)
    for i, line in enumerate(lines):
        c.drawString(40, 800 - 20 * i, line)
    c.save()


RECIPE = """\
# hkllm data build recipe.yaml --out OUT
name: test
workers: 1
sources:
  - {name: docs, type: jsonl, path: docs.jsonl, license: CC-BY-4.0}
  - name: districts
    type: table
    path: tables/districts.csv
    template: "{name_zh}位於{region_zh}，人口約{population}人，是一個重要的地區，區內設施完善。"
    rows_per_doc: 1
    license: CC-BY-4.0
  - {name: notices, type: html, path: html, license: CC-BY-4.0}
  - {name: pledge, type: pdf, path: pdf, license: CC-BY-4.0}
  - {name: guides, type: text, path: text, split: paragraph, license: CC-BY-4.0}
  - {name: replay, type: jsonl, path: replay.jsonl, license: PSF-2.0, replay: true, variety: en}
steps:
  quality: {min_chars: 20}
  minhash: {ngram: 5, buckets: 14, hashes_per_bucket: 8}
  decontaminate: [eval.jsonl]
  decontaminate_ngram: 13
  heldout: 0.0
mix:
  replay: 0.25
"""


@pytest.fixture
def recipe_file(corpus: Path) -> Path:
    path = corpus / "recipe.yaml"
    path.write_text(RECIPE, encoding="utf-8")
    return path
