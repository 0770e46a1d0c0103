"""`hkllm data instructions`: templates expand seeds into chats; evaluation items never get through."""

import json
from pathlib import Path

import pytest
import yaml

from hkllm.data.instructions import OPENER, build, load_spec
from hkllm.errors import UserError

REPO = Path(__file__).resolve().parents[2]

FACT = {"id": "peak", "topic": "geography",
        "yue": {"questions": ["全港邊座山最高？", "香港最高峰叫咩名？"], "answer": "香港最高嘅山係大帽山。", "short": "大帽山",
                "wrong": ["太平山", "獅子山", "鳳凰山"]},
        "zh-hant": {"questions": ["香港境內海拔最高的是哪座山？"], "answer": "香港最高的山是大帽山。", "short": "大帽山",
                    "wrong": ["太平山", "獅子山", "鳳凰山"]},
        "en": {"questions": ["Name the tallest mountain in Hong Kong."], "answer": "Hong Kong's highest peak is Tai Mo Shan.",
               "short": "Tai Mo Shan", "wrong": ["Victoria Peak", "Lion Rock", "Lantau Peak"]}}
SAFETY = {"refusals": {"yue": ["對唔住，我幫唔到你。"], "zh-hant": ["抱歉，我不能協助。"], "en": ["Sorry, but I can't help with that."]},
          "refuse": [{"category": "weapons", "yue": ["教我整槍"], "zh-hant": ["教我製造槍械"], "en": ["Teach me to make a gun"]}],
          "answer": [{"category": "benign_food", "yue": [{"prompt": "點樣炸雞翼先脆？", "answer": "油溫要夠熱，炸兩次會脆啲。"}]}]}


def write_spec(tmp_path, eval_question="香港最高峰叫咩名？"):
    (tmp_path / "facts.yaml").write_text(yaml.safe_dump([FACT], allow_unicode=True), encoding="utf-8")
    (tmp_path / "safety.yaml").write_text(yaml.safe_dump(SAFETY, allow_unicode=True), encoding="utf-8")
    (tmp_path / "districts.csv").write_text("district_zh,region_zh\n灣仔區,香港島\n沙田區,新界\n", encoding="utf-8")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"id": "q1", "question": eval_question}, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    spec = {"facts": "facts.yaml", "safety": "safety.yaml", "decontaminate": ["eval.jsonl"], "mc_shuffles": 2,
            "tables": [{"path": "districts.csv", "yue": [{"q": "{district_zh}喺邊個區域？", "a": "{district_zh}喺{region_zh}。"}]}]}
    path = tmp_path / "instructions.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


def test_seeds_expand_into_chats_in_every_variety(tmp_path):
    report = build(load_spec(write_spec(tmp_path, eval_question="Something else entirely, not in the seeds at all")),
                   tmp_path / "out")
    chats = [json.loads(line) for line in (tmp_path / "out" / "chat.jsonl").read_text().splitlines()]
    tasks = {c["task"].split(":")[0] for c in chats}
    assert tasks == {"fact_qa", "fact_mc", "table_qa", "refuse", "answer"}
    assert report["dropped_by_decontamination"] == 0 and report["chats"] == len(chats)
    mc = [c for c in chats if c["task"] == "fact_mc" and c["lang"] == "en"]
    assert len(mc) == 2 and all(c["messages"][-1]["content"] == "The answer is Tai Mo Shan." for c in mc)
    assert all("A. " in c["messages"][-2]["content"] and "Tai Mo Shan" in c["messages"][-2]["content"] for c in mc)
    refusals = [c for c in chats if c["task"] == "refuse:weapons"]
    assert {c["lang"] for c in refusals} == {"yue", "zh-hant", "en"} and len(refusals) == 3 * 3  # 3 framings each
    assert any(c["messages"][-1]["content"] == "灣仔區喺香港島。" for c in chats)
    docs = [json.loads(line) for line in (tmp_path / "out" / "facts.jsonl").read_text().splitlines()]
    assert {d["variety"] for d in docs} == {"yue", "zh-hant", "en"}
    assert any("問題：" in d["text"] and "答案：大帽山" in d["text"] for d in docs)


def test_preference_pairs_differ_in_what_the_gate_checks(tmp_path):
    build(load_spec(write_spec(tmp_path, eval_question="Something else entirely, not in the seeds at all")), tmp_path / "out")
    pairs = [json.loads(line) for line in (tmp_path / "out" / "preferences.jsonl").read_text().splitlines()]
    by_kind = {}
    for p in pairs:
        by_kind.setdefault(p["kind"], []).append(p)
    assert set(by_kind) == {"variety", "refuse", "answer"}        # one fact: no other fact to be grounded against
    variety = {p["lang"]: p for p in by_kind["variety"] if p["prompt"][0]["content"].endswith("香港最高峰叫咩名？")}
    assert variety["yue"]["chosen"][0]["content"] == "香港最高嘅山係大帽山。"
    assert variety["yue"]["rejected"][0]["content"] == "香港最高的山是大帽山。"   # the written-Chinese answer
    # a refusal's variety pair keeps both answers refusals: teaching the variety never teaches compliance
    refusal_variety = [p for p in by_kind["variety"] if p["prompt"][0]["content"].endswith("教我整槍")]
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in refusal_variety] == \
        [("對唔住，我幫唔到你。", "抱歉，我不能協助。")]
    refuse = [p for p in by_kind["refuse"] if p["lang"] == "yue"]
    assert refuse and all(p["chosen"][0]["content"] == "對唔住，我幫唔到你。" for p in refuse)
    assert all(p["rejected"][0]["content"] == OPENER["yue"] + "油溫要夠熱，炸兩次會脆啲。" for p in refuse)
    answer = by_kind["answer"]
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in answer] == \
        [(OPENER["yue"] + "油溫要夠熱，炸兩次會脆啲。", "對唔住，我幫唔到你。")]
    two = [FACT, {**FACT, "id": "harbour", "yue": {**FACT["yue"], "answer": "維港係香港最大嘅海港。"}}]
    (tmp_path / "facts.yaml").write_text(yaml.safe_dump(two, allow_unicode=True), encoding="utf-8")
    build(load_spec(tmp_path / "instructions.yaml"), tmp_path / "out2")
    grounded = [json.loads(line) for line in (tmp_path / "out2" / "preferences.jsonl").read_text().splitlines()]
    grounded = [p for p in grounded if p["kind"] == "grounded" and p["lang"] == "yue"]
    assert {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in grounded} == \
        {("香港最高嘅山係大帽山。", "維港係香港最大嘅海港。"), ("維港係香港最大嘅海港。", "香港最高嘅山係大帽山。")}


def test_helpful_answers_to_requests_share_one_opening_and_refusals_keep_theirs(tmp_path):
    path = write_spec(tmp_path, eval_question="Something else entirely, not in the seeds at all")
    (tmp_path / "general.yaml").write_text(yaml.safe_dump({"qa": {"en": [{"prompt": "Where is the Peak Tram?",
                                                                        "answer": "In Central."}]}}), encoding="utf-8")
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "general": "general.yaml"}, allow_unicode=True), encoding="utf-8")

    def answers(out) -> dict:
        build(load_spec(path), out)
        by_task = {}
        for line in (out / "chat.jsonl").read_text().splitlines():
            chat = json.loads(line)
            by_task.setdefault(chat["task"].split(":")[0], set()).add(chat["messages"][-1]["content"])
        return by_task

    opened = answers(tmp_path / "out")
    assert opened["answer"] == {OPENER["yue"] + "油溫要夠熱，炸兩次會脆啲。"}
    assert opened["general_qa"] == {OPENER["en"] + "In Central."}
    assert opened["refuse"] == {"對唔住，我幫唔到你。", "抱歉，我不能協助。", "Sorry, but I can't help with that."}
    assert not any(a.startswith(tuple(OPENER.values())) for a in opened["fact_qa"] | opened["fact_mc"])
    path.write_text(path.read_text() + "helpful_opener: false\n", encoding="utf-8")
    plain = answers(tmp_path / "plain")
    assert plain["answer"] == {"油溫要夠熱，炸兩次會脆啲。"} and plain["general_qa"] == {"In Central."}


def test_chats_sharing_an_ngram_with_an_eval_item_are_dropped_and_counted(tmp_path):
    report = build(load_spec(write_spec(tmp_path)), tmp_path / "out")
    chats = (tmp_path / "out" / "chat.jsonl").read_text()
    assert "香港最高峰叫咩名" not in chats        # every chat asking it that way shares 8 characters with the eval item
    assert "全港邊座山最高" in chats              # the other phrasing is kept
    # its question-answer chat, its 2 multiple-choice chats and its preference pair
    assert report["dropped_by_decontamination"] == 1 + 2 + 1
    assert "香港最高峰叫咩名" not in (tmp_path / "out" / "preferences.jsonl").read_text()
    assert "香港最高峰叫咩名" in (tmp_path / "out" / "dropped.jsonl").read_text()


def test_bad_seed_and_template_errors_name_the_place(tmp_path):
    path = write_spec(tmp_path)
    broken = dict(FACT, en={"questions": ["x"], "answer": "y"})
    (tmp_path / "facts.yaml").write_text(yaml.safe_dump([broken], allow_unicode=True), encoding="utf-8")
    with pytest.raises(UserError, match=r"facts.yaml: fact 1 \(peak\): field 'en.short'"):
        build(load_spec(path), tmp_path / "out")
    (tmp_path / "facts.yaml").write_text(yaml.safe_dump([FACT], allow_unicode=True), encoding="utf-8")
    spec = yaml.safe_load(path.read_text())
    spec["tables"][0]["yue"][0]["q"] = "{district}喺邊？"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    with pytest.raises(UserError, match=r"tables\[0\].yue\[0\]: column 'district' is not in districts.csv"):
        build(load_spec(path), tmp_path / "out")
    path.write_text("facts: facts.yaml\npreference_kinds: [variety, style]\n")
    with pytest.raises(UserError, match="field 'preference_kinds': unknown kind 'style'"):
        build(load_spec(path), tmp_path / "out")
    path.write_text("facts: facts.yaml\nmc_shufles: 2\n")
    with pytest.raises(UserError, match="unknown field"):
        load_spec(path)


def test_the_quickstart_set_is_clean_against_every_eval_file(tmp_path):
    """The shipped recipe: every variety and task present, and no chat shares an n-gram with the
    evaluation sets (anything that did was dropped, and is counted in the report)."""
    report = build(load_spec(REPO / "recipes" / "data" / "instructions.yaml"), tmp_path / "out")
    assert report["chats"] > 3000
    for task in ("fact_qa", "fact_mc", "table_qa", "refuse", "answer", "general_qa", "rewrite", "translate"):
        assert all(report["by_task"][task].get(v, 0) > 0 for v in ("yue", "zh-hant", "en")) or task == "rewrite", task
    from datatrove.data import Document

    from hkllm.data.steps import Decontaminate, load_eval_texts

    step = Decontaminate(load_eval_texts(sorted((REPO / "data" / "eval").glob("*.jsonl"))))
    for line in (tmp_path / "out" / "chat.jsonl").read_text().splitlines():
        text = "\n".join(m["content"] for m in json.loads(line)["messages"])
        assert step.filter(Document(text=text, id="x")) is True, text[:80]


def test_quickstart_replies_are_in_the_askers_variety_and_refusals_open_in_it(tmp_path):
    """What the gate's language rule asks of the model, the training replies must show: facts,
    multiple-choice replies, refusals and helpful answers read as the asker's variety to `hkllm text
    detect`; and no opening word of a Cantonese refusal opens a written-Chinese one."""
    from hkllm.text.detect import detect

    build(load_spec(REPO / "recipes" / "data" / "instructions.yaml"), tmp_path / "out")
    chats = [json.loads(line) for line in (tmp_path / "out" / "chat.jsonl").read_text().splitlines()]
    for task in ("fact_qa", "fact_mc", "refuse", "answer"):
        for v in ("yue", "zh-hant", "en"):
            replies = [c["messages"][-1]["content"] for c in chats if c["task"].split(":")[0] == task and c["lang"] == v]
            wrong = [r for r in replies if detect(r).variety != v]
            assert len(wrong) <= 0.05 * len(replies), (task, v, len(wrong), len(replies), wrong[:3])
    first = {v: {c["messages"][-1]["content"][0] for c in chats if c["task"].startswith("refuse") and c["lang"] == v}
             for v in ("yue", "zh-hant")}
    assert first["yue"] and not first["yue"] & first["zh-hant"], first
