"""`hkllm realmodel`: its text preparation, paths and report in the default suite (seconds), and the
real runs on SmolLM2 only when asked for:

    HKLLM_REALMODEL=smoke pytest tests/test_realmodel.py   # every stage, 2 steps each (~5 min, 1 core)
    HKLLM_REALMODEL=full  pytest tests/test_realmodel.py   # `hkllm realmodel` as documented (~30 min, 2 cores)
"""

import json
import os
from pathlib import Path

import pytest

from hkllm import realmodel as R
from hkllm.errors import UserError


def _data_build(folder: Path, rows: dict) -> Path:
    """A minimal `hkllm data build` folder: datacard.json and train/heldout shards."""
    for split, docs in rows.items():
        (folder / split).mkdir(parents=True)
        (folder / split / "00000.jsonl").write_text("".join(
            json.dumps({"text": t, "id": t, "metadata": {"source": s, "variety": v, "replay": rp}}, ensure_ascii=False)
            + "\n" for t, v, s, rp in docs), encoding="utf-8")
    (folder / "datacard.json").write_text("{}")
    return folder


def test_prepare_texts_keeps_english_evaluation_apart_from_replay(tmp_path):
    data = _data_build(tmp_path / "data", {
        "train": [("我哋去咗旺角。", "yue", "hkcancor", False), ("Python lists are mutable.", "en", "python_docs", True),
                  ("District notice.", "en", "notices", False)],
        "heldout": [("佢喺屋企。", "yue", "hkcancor", False), ("市民可於辦事處登記。", "zh-hant", "ctcpc", False),
                    ("A dict maps keys to values.", "en", "python_docs", True), ("Bus notice.", "en", "notices", False)]})
    counts = R.prepare_texts(data, tmp_path)
    assert counts == {"heldout": {"yue": 1, "zh-hant": 1, "en": 1}, "replay": 1}
    heldout = [json.loads(line) for line in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    # English is the held-out replay text (what the model knew), not the corpus' own English
    assert {r["text"] for r in heldout if r["variety"] == "en"} == {"A dict maps keys to values."}
    assert [json.loads(line)["text"] for line in (tmp_path / "replay.jsonl").read_text().splitlines()] == [
        "Python lists are mutable."]


def test_prepare_texts_without_held_out_english_is_a_clear_error(tmp_path):
    data = _data_build(tmp_path / "data", {"train": [("x", "en", "python_docs", True)],
                                           "heldout": [("佢喺屋企。", "yue", "h", False)]})
    with pytest.raises(UserError, match="no held-out zh-hant, en"):
        R.prepare_texts(data, tmp_path)


def test_recipe_paths_follow_out_and_the_repository(tmp_path):
    out = tmp_path / "rm"
    assert R.retarget("runs/smollm2/hk-vocab", out) == str(out / "hk-vocab")
    assert R.retarget([{"path": "runs/smollm2/data", "split": "all"}], out) == [{"path": str(out / "data"), "split": "all"}]
    assert R.retarget("data/eval/en_general.jsonl", out) == str(R.REPO / "data/eval/en_general.jsonl")
    assert R.retarget("pydoc:", out) == "pydoc:"


def test_recipes_open_with_their_command_and_load():
    from hkllm.train.recipe import load

    for name in ("cpt.yaml", "sft.yaml", "suite.yaml", "gate.yaml"):
        assert (R.RECIPES / name).read_text(encoding="utf-8").startswith("# hkllm ")
    assert load(R.RECIPES / "cpt.yaml").train.precision == "auto"
    assert load(R.RECIPES / "sft.yaml").stage == "sft"
    from hkllm.eval import gate
    from hkllm.eval.run import load_suite

    assert set(load_suite(R.RECIPES / "suite.yaml")["tasks"]) == {"lm", "knowledge"}
    assert set(gate.load_policy(R.RECIPES / "gate.yaml")["rules"]) == {
        "hk_gain_min", "forgetting_max", "negative_flip_rate_max", "mc_accuracy_min_delta"}


def test_english_question_set_is_well_formed():
    rows = [json.loads(line) for line in (R.REPO / "data/eval/en_general.jsonl").read_text().splitlines()]
    assert len(rows) >= 40 and len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["lang"] == "en" and len(r["choices"]) == 4 and r["choices"][r["answer"]] == r["answer_text"]


def _results(mc, open_, en, hk, yue, zh):
    m = lambda v: {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "n": 40}
    return {"metrics": {"knowledge.mc.acc": m(mc), "knowledge.open.acc": m(open_), "lm.bpb.en": m(en),
                        "lm.bpb.hk": m(hk), "lm.bpb.yue": m(yue), "lm.bpb.zh-hant": m(zh)}}


def test_report_shows_gain_and_forgetting_against_the_imported_model(tmp_path):
    evals = {"import": _results(0.70, 0.20, 1.10, 3.00, 3.20, 2.80),
             "cpt-no-replay": _results(0.60, 0.20, 1.40, 2.50, 2.60, 2.40),
             "cpt": _results(0.70, 0.20, 1.15, 2.55, 2.65, 2.45)}
    train = {"cpt-no-replay": {"tokens_per_second": 131.2, "replay_share": 0.0},
             "cpt": {"tokens_per_second": 128.0, "replay_share": 0.25}}
    vocab = {"added_tokens": 1000, "vocab_size": 50152, "bytes_per_token_before": 1.4, "bytes_per_token_after": 2.5}
    text = R.render_report(evals, train, vocab, {"heldout": {"yue": 16, "zh-hant": 14, "en": 16}}, "| gate |", True,
                           "| stage | time |", tmp_path)
    assert "| cpt-no-replay | 0% | +0.500 | +0.300 | -0.100 | +0.000 |" in text
    assert "| cpt | 25% | +0.450 | +0.050 | +0.000 | +0.000 |" in text
    assert "| import | 0.700 [0.60, 0.80] |" in text and "| 131 |" in text
    assert "RELEASE" in text and "+1000 Hong Kong tokens" in text


MODE = os.environ.get("HKLLM_REALMODEL", "")


@pytest.mark.realmodel
@pytest.mark.skipif(MODE not in ("smoke", "full"), reason="set HKLLM_REALMODEL=smoke or full to run SmolLM2 end to end")
def test_realmodel_end_to_end(tmp_path):
    from hkllm.cli import main

    out = Path(os.environ.get("HKLLM_REALMODEL_OUT") or tmp_path / "smollm2")
    assert main(["realmodel", "--out", str(out)] + (["--smoke"] if MODE == "smoke" else [])) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Release gate" in report and (out / "eval" / "sft" / "gate.json").exists()
    results = {n: json.loads((out / "eval" / n / "results.json").read_text())["metrics"] for n in R.EVALUATED}
    assert results["import"]["knowledge.mc.acc"]["value"] >= 0.6   # a model that knew something
    if MODE == "full":
        # localization gains Hong Kong text, and replay forgets less English than no replay
        for name in ("cpt-no-replay", "cpt"):
            assert results[name]["lm.bpb.hk"]["value"] < results["import"]["lm.bpb.hk"]["value"]
        assert results["cpt"]["lm.bpb.en"]["value"] <= results["cpt-no-replay"]["lm.bpb.en"]["value"]


def test_stage_times_survive_a_rerun_that_skips_the_stage(tmp_path):
    timer = R.Timer(tmp_path)
    assert timer.run("cpt", lambda: ("metrics", False)) == "metrics"
    again = R.Timer(tmp_path)
    again.run("cpt", lambda: ("metrics", True))
    assert "| cpt | 0.0 min (earlier run) |" in again.table()
