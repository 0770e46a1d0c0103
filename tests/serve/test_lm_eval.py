"""lm-evaluation-harness's `local-completions` model scores a multiple-choice task through
`hkllm serve`: its log-likelihoods must be the model's own."""

import json

import pytest
import torch

ITEMS = [("香港有幾多個區？", ["18個", "16個", "22個"], 0), ("八達通係咩？", ["一種電子貨幣卡", "一種雀仔", "一座山"], 0),
         ("天文台八號風球係咩意思？", ["烈風或暴風", "大雨", "酷熱"], 0), ("香港嘅法定語文係？", ["中文同英文", "日文", "法文"], 0)]


def loglikelihood(engine, context: str, continuation: str) -> float:
    ctx, whole = engine.encode_text(context), engine.encode_text(context + continuation)
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(torch.tensor([whole])).logits[0], -1)
    return sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))


def test_lm_eval_local_completions_against_hkllm_serve(serve, engine, model_dir, tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    data = tmp_path / "hk_mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}, ensure_ascii=False) + "\n"
                            for q, c, a in ITEMS), encoding="utf-8")
    (tmp_path / "hk_mc_tiny.yaml").write_text(f"""task: hk_mc_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "問：{{{{question}}}}\\n答："
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
""", encoding="utf-8")
    server = serve()
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={"base_url": server.base_url + "/completions", "model": engine.name, "tokenizer": str(model_dir),
                    "tokenizer_backend": "huggingface", "num_concurrent": 2, "max_retries": 1},
        tasks=["hk_mc_tiny"], task_manager=TaskManager(include_path=str(tmp_path)), log_samples=True)
    samples = results["samples"]["hk_mc_tiny"]
    assert len(samples) == len(ITEMS)
    for s in samples:
        doc = s["doc"]
        ours = [loglikelihood(engine, f"問：{doc['question']}\n答：", " " + c) for c in doc["choices"]]
        theirs = [r[0][0] for r in s["resps"]]
        assert theirs == pytest.approx(ours, abs=1e-3)
        assert s["acc"] == float(max(range(len(ours)), key=ours.__getitem__) == doc["answer"])
    assert 0.0 <= results["results"]["hk_mc_tiny"]["acc,none"] <= 1.0
