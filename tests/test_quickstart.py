import json
import subprocess
import sys


def test_quickstart_builds_the_demo_corpus_and_prints_its_card(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hkllm", "quickstart", "--out", str(tmp_path / "qs")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "# Data card: demo" in out.stdout
    card = json.loads((tmp_path / "qs" / "data" / "datacard.json").read_text(encoding="utf-8"))
    varieties = card["train"]["by_variety"]
    assert {"yue", "zh-hant", "en"} <= set(varieties)
    replay = sum(v["characters"] for k, v in card["train"]["by_source"].items() if k == "python_docs")
    assert 0.15 < replay / card["train"]["characters"] < 0.35
    assert card["steps"]["redact"]["redacted_email"] > 0
