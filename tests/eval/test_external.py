"""Loaders for external Cantonese benchmarks on disk (hkllm.eval.external), on fixtures we wrote in
the real formats: tests/eval/fixtures/external/ (malformed files, one per error case, in malformed/)."""

import json
import shutil
from pathlib import Path

import pytest

from hkllm.errors import UserError
from hkllm.eval.external import LOADERS, GenItem, MCItem, load_external, load_external_report, stratified_subset

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


# These two tests encoded the old behaviour (one malformed record refused the whole benchmark): a
# malformed record is now skipped and reported, and only a benchmark of which nothing loads fails.
@pytest.mark.parametrize("name, folder, loaded, message", [
    ("yue-mmlu", "mmlu_bad_answer", 2,
     'Yue-MMLU/yue_mmlu.json record 2: field "answer" is "E", expected one of A-D'),
    ("yue-mmlu", "mmlu_missing_choice", 1, 'Yue-MMLU/education.json record 1: field "C" is missing'),
    ("yue-gsm8k", "gsm8k_no_final_answer", 1,
     'Yue-GSM8K/Yue-GSM8K.json record 1: field "answer" has no final answer'),
    ("yue-truthfulqa", "truthfulqa_no_answer", 1, 'Yue-TruthfulQA/Yue-TruthfulQA.json record 1: field "best_answer"'),
    ("yue-trans", "trans_no_cantonese", 1, 'Yue-TRANS/Yue-TRANS.json record 1: field "yue" is missing'),
    ("hkcanto-eval", "hkcanto_bad_answer", 1,
     'cultural/test/food_test.csv record 1 (line 2): field "answer" (column 6) is "Z", expected one of A-D'),
    ("hkcanto-eval", "hkcanto_short_row", 1, "cultural/test/food_test.csv record 1 (line 3): has 2 column(s)"),
])
def test_malformed_record_skipped_and_reported_with_file_record_and_field(name, folder, loaded, message):
    items, report = load_external_report(name, BAD / folder)
    assert len(items) == loaded == report.loaded
    assert report.skipped_records == 1 and report.skipped_files == 0
    assert message in str(report.skipped[0])
    assert message in report.summary() and report.to_dict()["skipped_examples"][0]["where"] in message


def test_unreadable_only_file_fails_naming_file_and_reason():
    with pytest.raises(UserError) as err:
        load_external("yue-arc-c", BAD / "arc_not_json")
    assert "Yue-ARC-C/Yue-ARC-C.json: not valid JSON at line 3" in str(err.value)
    assert "nothing loaded" in str(err.value)


def test_mixed_truthfulqa_forms_minority_skipped(tmp_path):
    folder = tmp_path / "Yue-TruthfulQA"
    folder.mkdir()
    (folder / "mixed.json").write_text(json.dumps([
        {"question": "一", "mc1_targets": {"choices": ["a", "b"], "labels": [1, 0]}},
        {"question": "二", "best_answer": "b"}]), encoding="utf-8")
    items, report = load_external_report("yue-truthfulqa", tmp_path)
    assert [type(i) for i in items] == [MCItem]
    assert 'mixed.json record 1: field "mc1_targets" is missing' in str(report.skipped[0])


def test_fails_only_when_nothing_loads(tmp_path):
    folder = tmp_path / "Yue-MMLU"
    folder.mkdir()
    (folder / "law.json").write_text(json.dumps([{"question": "一", "B": "b"}, ["not", "an", "object"]]),
                                     encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_external("yue-mmlu", tmp_path)
    message = str(err.value)
    assert message.startswith("yue-mmlu: nothing loaded from") and "2 record(s) and 0 file(s) skipped" in message
    assert 'law.json record 0: field "A" is missing' in message and "law.json record 1: expected a JSON object" in message
    (folder / "ok.json").write_text(json.dumps([{"question": "二", "A": "a", "B": "b", "answer": "A"}]),
                                    encoding="utf-8")
    items, report = load_external_report("yue-mmlu", tmp_path)
    assert [i.id for i in items] == ["ok-0"] and report.skipped_records == 2 and report.records == 3


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


# ---------------------------------------------------------------------------------------------
# The published files, in their real layouts and record shapes (fixtures/external/side_by_side/:
# a folder holding a Yue-Benchmark/ and an hkcanto-eval/ clone side by side)

REAL = FIX / "side_by_side"
YUE_REPO = REAL / "Yue-Benchmark" / "data" / "latest_data"
HK_REPO = REAL / "hkcanto-eval"


def test_data_dir_with_both_clones_side_by_side():
    for name, n in [("yue-mmlu", 14), ("yue-arc-c", 4), ("yue-gsm8k", 2), ("yue-truthfulqa", 2), ("yue-trans", 4),
                    ("hkcanto-eval", 15)]:
        items, report = load_external_report(name, REAL)
        assert len(items) == n, name
    _, report = load_external_report("yue-gsm8k", REAL)
    assert report.files == ["Yue-Benchmark/data/latest_data/Yue-GSM8K/Yue-GSM8K.json"]
    # Yue-Benchmark's MMLU_Cantonese/test/*_test.csv beside the clone is not HKCanto-Eval
    _, report = load_external_report("hkcanto-eval", REAL)
    assert all(f.startswith("hkcanto-eval/data/") for f in report.files)


def test_yue_mmlu_real_file_record_without_choice_a_is_skipped():
    # security_study.json as published: one record's choice "A" is merged into its question
    items, report = load_external_report("yue-mmlu", REAL)
    assert {i.topic for i in items} == {"chinese_literature", "economics", "education", "security_study",
                                        "world_religions"}
    assert [i.id for i in items if i.topic == "security_study"] == ["security_study-0", "security_study-1",
                                                                    "security_study-3"]
    assert [str(s) for s in report.skipped] == [
        'Yue-Benchmark/data/latest_data/Yue-MMLU/security_study.json record 2: field "A" is missing']
    assert (report.records, report.loaded, report.skipped_records) == (15, 14, 1)


def test_yue_arc_c_three_choice_items_and_numbered_answers():
    items, report = load_external_report("yue-arc-c", YUE_REPO)
    assert [(i.id, len(i.choices), i.answer) for i in items] == [
        ("Yue-ARC-C-0", 4, 2), ("Yue-ARC-C-1", 3, 0),   # "D": null -> three choices
        ("Yue-ARC-C-2", 4, 2), ("Yue-ARC-C-3", 3, 1)]   # ARC's 1-based "3" -> C, "2" -> B
    assert items[1].choices == ["冰", "水蒸氣", "牛奶"]
    # a three-choice item whose answer is "D" cannot be scored: skipped, said why
    assert [str(s) for s in report.skipped] == [
        'Yue-ARC-C/Yue-ARC-C.json record 4: field "answer" is "D", expected one of A-C (or a number 1-3)']


def test_yue_trans_real_keys_mandarin_source_under_en():
    items = load_external("yue-trans", YUE_REPO)
    assert [(i.id, i.src_lang, i.tgt_lang, i.topic) for i in items] == [
        ("en-yue-0.en-yue", "en", "yue", "en-yue"), ("en-yue-1.en-yue", "en", "yue", "en-yue"),
        ("zh-yue-0.zh-yue", "zh", "yue", "zh-yue"), ("zh-yue-1.zh-yue", "zh", "yue", "zh-yue")]
    assert items[2].prompt == "昨天男朋友带我去见家长，我打扮得斯斯文文。"
    assert items[2].reference == "尋日男朋友帶我去見家長，我打扮得斯斯文文。"


def test_hkcanto_accented_answer_letter():
    items = load_external("hkcanto-eval", HK_REPO / "data" / "dse")
    bio = [i for i in items if i.topic == "dse/bio_zh"]
    assert [i.answer for i in bio] == [3, 2]  # "Ď", a typo of D, and "C"
    assert bio[0].lang == "zh"


def test_hkcanto_english_mmlu_left_out_and_english_questions_tagged_en():
    items, report = load_external_report("hkcanto-eval", HK_REPO)
    assert not [i for i in items if i.topic.startswith("mmlu/")]
    assert len(report.left_out) == 1
    assert report.left_out[0].startswith("data/mmlu/ (1 file(s)): the original English MMLU")
    langs = {i.topic: i.lang for i in items}
    assert langs["phonetics/phonology"] == "en"  # English questions about Cantonese sounds
    assert langs["dse/econ_en"] == "en" and langs["dse/bio_zh"] == "zh"
    assert langs["cultural/food"] == langs["hk-law/landlord_tenant"] == langs["canto-mmlu/anatomy"] == "yue"
    # pointed at on purpose, the English MMLU loads, tagged en
    english = load_external("hkcanto-eval", HK_REPO / "data" / "mmlu")
    assert [(i.id, i.lang) for i in english] == [("mmlu/anatomy_test-0", "en"), ("mmlu/anatomy_test-1", "en")]


def test_cantonese_questions_with_formulas_or_code_stay_yue(tmp_path):
    test = tmp_path / "canto-mmlu" / "test"
    test.mkdir(parents=True)
    (test / "college_mathematics_test.csv").write_text(
        '"設 f(x) = ax + b，如果 f(1) = 3 同 f(2) = 5，a 係幾多？","1","2","3","4","B"\n'
        '"for i in range(3) 同 if x > 0 係咩語法？","Python","C","Java","Go","A"\n', encoding="utf-8")
    assert [i.lang for i in load_external("hkcanto-eval", tmp_path)] == ["yue", "yue"]


def test_hkcanto_clone_without_git_lfs_says_git_lfs_pull():
    with pytest.raises(UserError) as err:
        load_external("hkcanto-eval", FIX / "hkcanto_no_lfs")
    assert "Git LFS pointer" in str(err.value) and "run `git lfs pull`" in str(err.value)
    assert "column(s)" not in str(err.value)


def test_lfs_pointer_beside_data_is_skipped_and_named(tmp_path):
    shutil.copytree(HK_REPO / "data" / "cultural", tmp_path / "cultural")
    shutil.copy(FIX / "hkcanto_no_lfs" / "data" / "cultural" / "test" / "food_test.csv",
                tmp_path / "cultural" / "test" / "tatsujin_test.csv")
    items, report = load_external_report("hkcanto-eval", tmp_path)
    assert len(items) == 2 and report.skipped_files == 1 and report.lfs_pointers == 1
    assert str(report.skipped[0]).startswith("cultural/test/tatsujin_test.csv: is a Git LFS pointer file")
    assert "run `git lfs pull`" in report.summary()


def test_limit_is_stratified_every_subject_represented():
    # in name order, the first 5 items are 4 chinese_literature and 1 economics: 2 of 5 subjects
    items = load_external("yue-mmlu", REAL, limit=5)
    assert len(items) == 5
    assert {i.topic for i in items} == {"chinese_literature", "economics", "education", "security_study",
                                        "world_religions"}
    many = load_external("yue-mmlu", REAL, limit=9)
    counts = {t: sum(i.topic == t for i in many) for t in {i.topic for i in many}}
    assert sum(counts.values()) == 9 and min(counts.values()) >= 1 and counts["chinese_literature"] >= 2


def test_limit_on_hkcanto_eval_includes_hong_kong_items():
    # in name order the first 6 items are all canto-mmlu (translated MMLU): no Hong Kong item
    assert {i.topic.split("/")[0] for i in load_external("hkcanto-eval", HK_REPO)[:6]} == {"canto-mmlu"}
    items, report = load_external_report("hkcanto-eval", HK_REPO, limit=6)
    assert {i.topic.split("/")[0] for i in items} == {"canto-mmlu", "cultural", "dse", "hk-law", "phonetics"}
    assert (report.limit, report.selected, report.topics) == (6, 6, 7)


def test_limit_subset_is_stable_and_kept_in_file_order():
    first = [i.id for i in load_external("hkcanto-eval", HK_REPO, limit=7)]
    again = [i.id for i in load_external("hkcanto-eval", HK_REPO, limit=7)]
    everything = [i.id for i in load_external("hkcanto-eval", HK_REPO)]
    assert first == again and first == [i for i in everything if i in first]
    # the choice depends on the items, not on their order or on Python's hash seed
    items = load_external("yue-mmlu", REAL)
    assert [i.id for i in stratified_subset(items, 5)] == [i.id for i in stratified_subset(items[::-1], 5)][::-1]
    assert stratified_subset(items, None) == items and stratified_subset(items, 100) == items
    with pytest.raises(UserError, match="limit"):
        stratified_subset(items, -1)


def test_evaluate_reports_skips_and_takes_per_entry_data_dir(tmp_path):
    from hkllm.eval.run import evaluate
    from tests.eval.test_tasks import Scripted

    suite = tmp_path / "suite.yaml"
    suite.write_text(f"external:\n  - {{name: yue-mmlu, data_dir: {REAL}}}\n"
                     f"  - {{name: hkcanto-eval, data_dir: {REAL}}}\n", encoding="utf-8")
    lines = []
    results = evaluate(Scripted(), suite, tmp_path / "out", progress=lines.append)  # no --data-dir
    assert results["metrics"]["external.yue-mmlu.acc"]["n"] == 14
    mmlu = results["external"]["yue-mmlu"]
    assert (mmlu["loaded"], mmlu["skipped_records"], mmlu["skipped_files"]) == (14, 1, 0)
    assert mmlu["skipped_examples"] == [
        {"where": "Yue-Benchmark/data/latest_data/Yue-MMLU/security_study.json record 2", "error": 'field "A" is missing'}]
    assert results["external"]["hkcanto-eval"]["left_out"][0].startswith("hkcanto-eval/data/mmlu/")
    saved = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert saved["external"] == results["external"]
    report_md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert 'security_study.json record 2`: field "A" is missing' in report_md
    assert any("1 malformed record(s) skipped" in line for line in lines)
    again = evaluate(Scripted(), suite, tmp_path / "out", progress=lines.append)  # kept from the first run
    assert again["external"] == results["external"]
