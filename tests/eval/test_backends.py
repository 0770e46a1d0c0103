"""`hkllm eval` end to end on a tiny model: in-process, through `hkllm serve`, through
lm-evaluation-harness, then `hkllm gate` on the results."""

import json
from pathlib import Path

import pytest

from hkllm.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def suite(tmp_path):
    items = [json.loads(line) for line in (REPO / "data/eval/hk_knowledge.jsonl").read_text().splitlines()][:12]
    knowledge = tmp_path / "k.jsonl"
    knowledge.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t * 4, "variety": v}, ensure_ascii=False) + "\n" for t, v in
                            [("我哋今日去咗旺角。", "yue"), ("市民可於辦事處辦理手續。", "zh-hant"),
                             ("The library opens at ten.", "en"), ("政府今天公布新措施。", "zh-hans")] * 3),
                    encoding="utf-8")
    path = tmp_path / "suite.yaml"
    path.write_text(f"""tasks:
  lm: {{sources: [{{path: {docs}, split: all}}]}}
  knowledge: {{path: {knowledge}, max_tokens: 8}}
  consistency: {{path: {knowledge}, probes: 3, k: 3, max_tokens: 8}}
  safety: {{path: {REPO}/data/eval/safety_prompts.jsonl, policy: {REPO}/recipes/eval/safety_policy.yaml,
           max_tokens: 8}}
""", encoding="utf-8")
    return path


def test_local_and_served_evaluations_agree(serve, model_dir, suite, tmp_path):
    assert main(["eval", str(model_dir), "--suite", str(suite), "--out", str(tmp_path / "local")]) == 0
    server = serve(cache=False)
    assert main(["eval", "--base-url", server.base_url, "--suite", str(suite), "--out", str(tmp_path / "served")]) == 0

    def load(name):
        rows = [json.loads(line) for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()]
        return json.loads((tmp_path / name / "results.json").read_text())["metrics"], rows

    (local_m, local_s), (served_m, served_s) = load("local"), load("served")
    pred = lambda rows, task: {r["id"]: r["pred"] for r in rows if r["task"] == task}  # noqa: E731
    assert pred(local_s, "knowledge.mc") == pred(served_s, "knowledge.mc")
    assert [r["output"] for r in local_s if r["task"] == "safety"] == [r["output"] for r in served_s if r["task"] == "safety"]
    assert local_m["consistency.repeat.max_distinct"]["value"] == 1.0
    assert served_m["consistency.repeat.max_distinct"]["value"] == 1.0
    for key in ("lm.bpb.hk", "lm.bpb.general"):
        assert local_m[key]["ci_low"] <= local_m[key]["value"] <= local_m[key]["ci_high"]
    assert (tmp_path / "local" / "bpb.png").exists() and (tmp_path / "local" / "report.md").exists()

    # the gate: the model against itself has no gain, so hk_gain_min fails → exit 1, gate.json says why
    assert main(["gate", str(tmp_path / "local"), str(tmp_path / "served"), "--policy",
                 str(REPO / "recipes/eval/gate.yaml")]) == 1
    gate = json.loads((tmp_path / "local" / "gate.json").read_text())
    verdicts = {r["rule"]: r["verdict"] for r in gate["rules"]}
    assert gate["passed"] is False
    assert verdicts["hk_gain_min"] == "fail" and verdicts["must_hold_negative_flips_max"] == "pass"
    assert verdicts["repeat_max_distinct"] == "pass"


def test_lm_eval_backend_against_hkllm_serve(serve, model_dir, engine, tmp_path):
    from hkllm.eval.backends import LocalBackend
    from hkllm.eval.tasks import multiple_choice, read_jsonl

    server = serve()
    out = tmp_path / "lm-eval"
    assert main(["eval", "--backend", "lm-eval", "--base-url", server.base_url, "--tokenizer", str(model_dir),
                 "--tasks", "hk_knowledge_mc", "--limit", "6", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "lm_eval.hk_knowledge_mc.acc" in results["metrics"]
    theirs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    items = [i for i in read_jsonl(REPO / "data/eval/hk_knowledge.jsonl", ("id",))[:6]]
    for i in items:
        i["lang"] = "zh"          # lm-eval task uses the Chinese template for every item
    ours = multiple_choice(LocalBackend(model_dir), items, "knowledge.mc")
    assert [s["score"] for s in theirs] == [s["score"] for s in ours]
