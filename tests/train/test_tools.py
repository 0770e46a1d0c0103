import json
import subprocess
import sys

import pytest

from hkllm.train.plan import count_parameters, estimate, load_config
from hkllm.train.tokenizer_extend import bytes_per_token, extend

from .conftest import write_jsonl


def test_tokenizer_extension_adds_hk_tokens_and_improves_bytes_per_token(tmp_path, base_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus = write_jsonl(tmp_path / "hk.jsonl", [{"text": f"第{i}次：佢哋喺𨋢度講嘢，話㗎喇，嘢食好正。我哋聽日再嚟。"} for i in range(200)])
    report = extend(str(base_run[0]), str(corpus), str(tmp_path / "ext"), max_new=50)
    assert report["added_tokens"] > 0
    assert report["bytes_per_token_after"] > report["bytes_per_token_before"]
    tok = AutoTokenizer.from_pretrained(tmp_path / "ext")
    base_tok = AutoTokenizer.from_pretrained(base_run[0])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ext")
    base_model = AutoModelForCausalLM.from_pretrained(base_run[0])
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    # each new row is the mean of the rows of the pieces the base tokenizer used
    new = report["examples"][0]
    pieces = base_tok(new, add_special_tokens=False)["input_ids"]
    expected = base_model.get_input_embeddings().weight[pieces].mean(0)
    assert torch.allclose(model.get_input_embeddings().weight[tok.convert_tokens_to_ids(new)], expected, atol=1e-6)
    assert json.loads((tmp_path / "ext" / "tokenizer_report.json").read_text())["added_tokens"] == report["added_tokens"]
    assert bytes_per_token(["嘢"], tok) >= bytes_per_token(["嘢"], base_tok)


def test_plan_shows_sixteen_bytes_per_parameter_for_deepseek_v3():
    config = load_config("deepseek-v3")
    params = count_parameters(config)
    assert 660e9 < params < 690e9
    e = estimate(config, params, gpus=8, gpu_mem_gb=80, offload=False, seq_len=4096, micro_batch=1)
    assert e["full_state_bytes"] == 16 * params and not e["fits"]
    e = estimate(config, params, gpus=256, gpu_mem_gb=141, offload=True, seq_len=4096, micro_batch=1)
    assert e["fits"] and e["per_gpu"]["master_fp32"] == 0


def test_plan_cli_exit_code_says_whether_it_fits():
    run = lambda *a: subprocess.run([sys.executable, "-m", "hkllm", "plan", *a], capture_output=True, text=True)  # noqa: E731
    fits = run("--model", "tiny", "--gpus", "1", "--gpu-mem", "24")
    assert fits.returncode == 0 and "FITS" in fits.stdout
    big = run("--model", "deepseek-v3", "--gpus", "8", "--gpu-mem", "80")
    assert big.returncode == 1 and "16 bytes/parameter" in big.stdout and "DOES NOT FIT" in big.stdout


@pytest.mark.parametrize("model", ["nope-model-xyz"])
def test_plan_unknown_model_is_a_clear_error(model):
    out = subprocess.run([sys.executable, "-m", "hkllm", "plan", "--model", model, "--gpus", "1", "--gpu-mem", "1"],
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert out.returncode == 2 and "not a preset" in out.stderr
