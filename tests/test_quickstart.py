import json
import subprocess
import sys


def test_quickstart_runs_every_stage_and_prints_the_tables(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hkllm", "quickstart", "--out", str(tmp_path / "qs"), "--smoke", "--compare-replay"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "# Data card: demo" in out.stdout
    assert "Hong Kong gain vs general forgetting" in out.stdout and "| cpt-no-replay | 0% |" in out.stdout
    card = json.loads((tmp_path / "qs" / "data" / "datacard.json").read_text(encoding="utf-8"))
    assert {"yue", "zh-hant", "en"} <= set(card["train"]["by_variety"])
    replay = card["train"]["by_source"]["python_docs"]["characters"]
    assert 0.15 < replay / card["train"]["characters"] < 0.35
    assert card["steps"]["redact"]["redacted_email"] > 0
    for stage in ("base", "cpt-no-replay", "cpt", "sft", "dpo"):
        metrics = json.loads((tmp_path / "qs" / stage / "metrics.json").read_text())
        assert {"yue", "zh-hant", "en", "zh-hans"} <= set(metrics["bpb_after"]), stage
    assert json.loads((tmp_path / "qs" / "cpt" / "metrics.json").read_text())["replay_share"] == 0.25
    # every model evaluated, dpo gated against base, and the way to serve it shown
    for stage in ("base", "cpt", "sft", "dpo"):
        metrics = json.loads((tmp_path / "qs" / "eval" / stage / "results.json").read_text())["metrics"]
        assert {"lm.bpb.hk", "knowledge.mc.acc", "safety.refusal_rate", "translation.chrf"} <= set(metrics), stage
    assert "consistency.version.flip_rate" in json.loads(
        (tmp_path / "qs" / "eval" / "dpo" / "results.json").read_text())["metrics"]
    gate = json.loads((tmp_path / "qs" / "eval" / "dpo" / "gate.json").read_text())
    assert {r["rule"] for r in gate["rules"]} >= {"hk_gain_min", "forgetting_max", "harmful_not_worse"}
    assert "| knowledge.mc.acc |" in out.stdout and "Gate verdict for dpo vs base" in out.stdout
    assert "hkllm serve" in out.stdout and "curl http://127.0.0.1:8000/v1/chat/completions" in out.stdout
    # the chat set was generated and decontaminated, the chat task ran, precision and timings reported
    assert "dropped by decontamination" in out.stdout and (tmp_path / "qs" / "instructions" / "chat.jsonl").exists()
    assert "chat.degenerate_rate" in json.loads((tmp_path / "qs" / "eval" / "dpo" / "results.json").read_text())["metrics"]
    assert "== hkllm quickstart: fp32 on cpu" in out.stdout
    assert json.loads((tmp_path / "qs" / "sft" / "metrics.json").read_text())["precision"]["precision"] == "fp32"
    timings = json.loads((tmp_path / "qs" / "timings.json").read_text())
    assert list(timings) == ["data", "instructions", "base", "cpt-no-replay", "cpt", "sft", "dpo", "eval + gate"]
    assert "| **total** |" in out.stdout

    # a second run skips every finished stage
    again = subprocess.run([sys.executable, "-m", "hkllm", "quickstart", "--out", str(tmp_path / "qs"), "--smoke", "--compare-replay"],
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == 5
    assert "earlier run" in again.stdout      # the timing table still shows the stages the first run did


def test_the_shipped_base_is_what_its_recipe_trains_and_copies_into_a_run(tmp_path):
    """data/models/tiny-base is recipes/tiny/base.yaml's output: same shape, same data, same steps."""
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hkllm.quickstart import REPO, SHIPPED_BASE, shipped_base
    from hkllm.train.recipe import load

    recipe = load(REPO / "recipes" / "tiny" / "base.yaml")
    shipped = yaml.safe_load((REPO / SHIPPED_BASE / "recipe.yaml").read_text())
    assert shipped["model"] == {"path": None, **{k: getattr(recipe.model, k) for k in shipped["model"] if k != "path"}}
    assert shipped["data"]["train"] == recipe.data.train and shipped["train"]["max_steps"] == recipe.train.max_steps
    metrics, done = shipped_base(tmp_path)
    assert not done and metrics["steps"] == recipe.train.max_steps
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    assert model.config.hidden_size == recipe.model.hidden_size and model.config.vocab_size == recipe.model.vocab_size
    assert AutoTokenizer.from_pretrained(tmp_path / "base").chat_template
    assert not (tmp_path / "base" / "checkpoints").exists() and not list((tmp_path / "base").glob("*.tmp"))
    assert shipped_base(tmp_path)[1] is True          # a finished copy is not redone
