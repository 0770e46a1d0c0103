"""Loaders for external Cantonese benchmarks on disk (hkllm.eval.external), on fixtures we wrote in
the real formats: tests/eval/fixtures/external/ (malformed files, one per error case, in malformed/)."""

import json
import shutil
from pathlib import Path

import pytest

from hkllm.errors import UserError
from hkllm.eval.external import LOADERS, GenItem, MCItem, load_external

FIX = Path(__file__).parent / "fixtures" / "external"
YUE = FIX / "yue_benchmark_v1"  # the Hugging Face layout: yue_benchmark_v1/<Benchmark>/*.json
BAD = FIX / "malformed"


def test_loaders_cover_every_benchmark():
    assert set(LOADERS) == {"yue-mmlu", "yue-arc-c", "yue-gsm8k", "yue-truthfulqa", "yue-trans", "hkcanto-eval"}


def test_yue_mmlu():
    items = load_external("yue-mmlu", YUE)
    assert all(isinstance(i, MCItem) for i in items)
    assert [i.id for i in items] == ["education-0", "education-1", "education-2",
                                     "world_religions_review4_publish1-0", "world_religions_review4_publish1-1"]
    assert [i.answer for i in items] == [1, 2, 0, 3, 0]
    first = items[0]
    assert first.question == "以下邊樣最能夠幫學生溫故知新？"
    assert first.choices == ["臨考先至溫書", "定期做重溫練習", "淨係睇筆記", "唔使溫書"]
    assert (first.lang, first.topic, first.source) == ("yue", "education", "yue-mmlu")
    assert items[-1].topic == "world_religions"  # "_review4_publish1" is not part of the subject


def test_yue_arc_c():
    items = load_external("yue-arc-c", YUE)
    assert [i.id for i in items] == ["Yue-ARC-C-0", "Yue-ARC-C-1", "Yue-ARC-C-2", "Yue-ARC-C-3"]
    assert [i.answer for i in items] == [2, 0, 3, 1]
    assert items[1].choices == ["根", "葉", "花", "果"]


def test_yue_gsm8k_reference_is_final_number():
    items = load_external("yue-gsm8k", YUE)
    assert all(isinstance(i, GenItem) and i.kind == "math" for i in items)
    assert [i.id for i in items] == [f"Yue-GSM8K-{n}" for n in range(4)]
    assert [i.reference for i in items] == ["15", "166", "15000", "-2"]  # "#### 166", "####15,000"
    assert items[0].prompt.startswith("阿明有12粒糖")


def test_yue_truthfulqa_generation_form():
    items = load_external("yue-truthfulqa", YUE)
    assert all(isinstance(i, GenItem) and i.kind == "qa" for i in items)
    assert [i.reference for i in items] == ["一般唔會，適量食冇問題", "唔係，金魚可以記得嘢幾個月",
                                            "唔可以"]  # empty best_answer: first of "true"
    assert items[1].prompt == "金魚嘅記憶係咪得三秒？"


def test_yue_truthfulqa_mc1_form():
    items = load_external("yue-truthfulqa", FIX / "truthfulqa_mc")
    assert all(isinstance(i, MCItem) for i in items)
    assert [(i.id, i.answer) for i in items] == [("Yue-TruthfulQA-0", 1), ("Yue-TruthfulQA-1", 1)]
    assert items[1].choices == ["九龍同新界", "香港島同九龍", "大嶼山同長洲"]


def test_yue_trans_one_item_per_direction():
    items = load_external("yue-trans", YUE)
    assert [(i.id, i.src_lang, i.tgt_lang) for i in items] == [
        ("Yue-TRANS-0.en-yue", "en", "yue"), ("Yue-TRANS-1.en-yue", "en", "yue"),
        ("Yue-TRANS-2.zh-yue", "zh", "yue")]  # the record's "en": null is ignored
    assert items[2].prompt == "我们明天在地铁站见面吧。" and items[2].reference == "我哋聽日喺地鐵站等啦。"
    assert all(i.kind == "translation" and i.lang == "yue" for i in items)


def test_yue_trans_direction_from_file_name():
    items = load_external("yue-trans", FIX / "yue_trans_directions")
    assert [(i.id, i.prompt, i.reference, i.lang) for i in items] == [
        ("yue-en-0.yue-en", "我食咗飯喇。", "I have already eaten.", "en"),
        ("yue-en-1.yue-en", "今日好熱呀。", "It is very hot today.", "en")]


def test_hkcanto_eval_reads_test_csvs_only():
    items = load_external("hkcanto-eval", FIX / "hkcanto-eval")
    assert [i.id for i in items] == [
        "cultural/food_test-0", "cultural/food_test-1", "cultural/food_test-2",
        "dse/econ_en_test-0", "dse/econ_en_test-1",
        "phonetics/character_metaknowledge_test-0", "phonetics/character_metaknowledge_test-1"]  # no dev/, test_old/
    assert [i.answer for i in items] == [0, 2, 1, 0, 1, 0, 1]
    food = items[0]
    assert food.choices == ["咖啡唔要糖唔要奶", "凍檸茶", "熱奶茶", "西多士"]
    assert (food.topic, food.lang, food.source) == ("cultural/food", "yue", "hkcanto-eval")
    assert items[3].lang == "en" and items[3].question.startswith("Which of the following")
    assert items[4].question.startswith("If the price of a good rises, ceteris paribus")  # quoted comma
    assert len(items[5].choices) == 5  # phonetics: A-E with "None of the above"


def test_entry_points_benchmark_folder_single_file_and_repo_layout(tmp_path):
    by_folder = load_external("yue-mmlu", YUE / "Yue-MMLU")
    assert [i.id for i in by_folder] == [i.id for i in load_external("yue-mmlu", YUE)]
    one = load_external("yue-gsm8k", YUE / "Yue-GSM8K" / "Yue-GSM8K.json")
    assert len(one) == 4
    # The GitHub repo layout, with a lower-case folder name: <root>/data/latest_data/yue-arc-c/
    shutil.copytree(YUE / "Yue-ARC-C", tmp_path / "data" / "latest_data" / "yue-arc-c")
    assert len(load_external("Yue_ARC_C", tmp_path)) == 4
    # HKCanto-Eval: the task's test folder itself
    assert len(load_external("hkcanto-eval", FIX / "hkcanto-eval" / "data" / "cultural" / "test")) == 3


def test_other_accepted_forms(tmp_path):
    arc = tmp_path / "Yue-ARC-C"
    arc.mkdir()
    (arc / "arc.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"id": "q7", "question": "邊樣係哺乳類？", "choices": {"text": ["鯨魚", "鯊魚"], "label": ["A", "B"]},
         "answerKey": "A"},
        {"id": "q9", "question": "一年有幾多季？", "choices": ["三", "四"], "answer": 1},
    ]) + "\n", encoding="utf-8")
    items = load_external("yue-arc-c", tmp_path)
    assert [(i.id, i.answer) for i in items] == [("arc-q7", 0), ("arc-q9", 1)]

    trans = tmp_path / "Yue-TRANS"
    trans.mkdir()
    (trans / "pairs.json").write_text(json.dumps([
        {"src_lang": "yue", "tgt_lang": "zh", "source": "佢今日唔返工。", "target": "他今天不上班。"}],
        ensure_ascii=False), encoding="utf-8")
    [item] = load_external("yue-trans", trans)
    assert (item.src_lang, item.tgt_lang, item.reference, item.lang) == ("yue", "zh", "他今天不上班。", "zh")

    csv_dir = tmp_path / "hk"
    csv_dir.mkdir()
    (csv_dir / "food_test.csv").write_text("question,A,B,C,D,answer\n點心,蝦餃,漢堡,薄餅,熱狗,a\n", encoding="utf-8")
    [row] = load_external("hkcanto-eval", csv_dir)
    assert (row.id, row.answer, row.topic) == ("food_test-0", 0, "food")  # header skipped, "a" accepted


@pytest.mark.parametrize("name, folder, message", [
    ("yue-mmlu", "mmlu_bad_answer", 'Yue-MMLU/yue_mmlu.json record 2: field "answer" is "E", expected one of A-D'),
    ("yue-mmlu", "mmlu_missing_choice", 'Yue-MMLU/education.json record 1: field "C" is missing'),
    ("yue-gsm8k", "gsm8k_no_final_answer", 'Yue-GSM8K/Yue-GSM8K.json record 1: field "answer" has no final answer'),
    ("yue-truthfulqa", "truthfulqa_no_answer", 'Yue-TruthfulQA/Yue-TruthfulQA.json record 1: field "best_answer"'),
    ("yue-trans", "trans_no_cantonese", 'Yue-TRANS/Yue-TRANS.json record 1: field "yue" is missing'),
    ("yue-arc-c", "arc_not_json", "Yue-ARC-C/Yue-ARC-C.json: not valid JSON at line 3"),
    ("hkcanto-eval", "hkcanto_bad_answer",
     'cultural/test/food_test.csv record 1 (line 2): field "answer" (column 6) is "Z", expected one of A-D'),
    ("hkcanto-eval", "hkcanto_short_row", "cultural/test/food_test.csv record 1 (line 3): has 2 column(s)"),
])
def test_malformed_names_file_record_and_field(name, folder, message):
    with pytest.raises(UserError) as err:
        load_external(name, BAD / folder)
    assert message in str(err.value)


def test_mixed_truthfulqa_forms_rejected(tmp_path):
    folder = tmp_path / "Yue-TruthfulQA"
    folder.mkdir()
    (folder / "mixed.json").write_text(json.dumps([
        {"question": "一", "mc1_targets": {"choices": ["a", "b"], "labels": [1, 0]}},
        {"question": "二", "best_answer": "b"}]), encoding="utf-8")
    with pytest.raises(UserError, match=r'mixed.json record 1: field "mc1_targets" is missing'):
        load_external("yue-truthfulqa", tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_external("yue-gsm8k", tmp_path / "nowhere")


@pytest.mark.parametrize("name, expected", [
    ("yue-mmlu", "Yue-MMLU/"), ("yue-arc-c", "Yue-ARC-C/"), ("yue-gsm8k", "Yue-GSM8K/"),
    ("yue-truthfulqa", "Yue-TruthfulQA/"), ("yue-trans", "Yue-TRANS/"), ("hkcanto-eval", "_test.csv"),
])
def test_missing_files_name_directory_and_expected_files(tmp_path, name, expected):
    (tmp_path / "notes.txt").write_text("nothing here", encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_external(name, tmp_path)
    assert str(tmp_path) in str(err.value) and expected in str(err.value)


def test_empty_benchmark_file_and_unknown_name(tmp_path):
    (tmp_path / "Yue-GSM8K").mkdir()
    (tmp_path / "Yue-GSM8K" / "Yue-GSM8K.json").write_text("[]", encoding="utf-8")
    with pytest.raises(UserError, match="contain no records"):
        load_external("yue-gsm8k", tmp_path)
    with pytest.raises(UserError, match='unknown external benchmark "cmmlu"'):
        load_external("cmmlu", tmp_path)
