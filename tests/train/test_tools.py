import json
import subprocess
import sys

import pytest

from hkllm.errors import UserError
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


# DeepSeek-V3's own inference config (inference/configs/config_671B.json), not a Hugging Face config.json
DEEPSEEK_INFERENCE = {"vocab_size": 129280, "dim": 7168, "inter_dim": 18432, "moe_inter_dim": 2048, "n_layers": 61,
                      "n_dense_layers": 3, "n_heads": 128, "n_routed_experts": 256, "n_shared_experts": 1,
                      "n_activated_experts": 8, "n_expert_groups": 8, "n_limited_groups": 4, "route_scale": 2.5,
                      "score_func": "sigmoid", "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                      "qk_rope_head_dim": 64, "v_head_dim": 128, "dtype": "fp8"}


def plan_cli(model):
    return subprocess.run([sys.executable, "-m", "hkllm", "plan", "--model", str(model), "--gpus", "8", "--gpu-mem", "80"],
                          capture_output=True, text=True)


def test_plan_on_deepseeks_inference_config_says_what_the_file_is(tmp_path):
    """Issue 10: this file failed with a bare `'model_type'`."""
    path = tmp_path / "config_671B.json"
    path.write_text(json.dumps(DEEPSEEK_INFERENCE))
    out = plan_cli(path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "this looks like DeepSeek's inference config" in out.stderr and str(path) in out.stderr
    assert "Hugging Face config.json" in out.stderr and "--model deepseek-v3" in out.stderr
    # the same for a folder whose config.json is that file
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(DEEPSEEK_INFERENCE))
    with pytest.raises(UserError, match="DeepSeek's inference config"):
        load_config(str(tmp_path / "ckpt"))


@pytest.mark.parametrize("body,why", [({"hidden": 8, "layers": 2}, "it has no 'model_type' (keys: hidden, layers)"),
                                      ([1, 2], "a JSON list, not an object")])
def test_plan_on_other_json_without_model_type_names_the_file(tmp_path, body, why):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(body))
    out = plan_cli(path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{path}: not a Hugging Face config.json" in out.stderr and why in out.stderr


def test_plan_on_metas_original_llama_params_json_says_what_the_file_is(tmp_path):
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
                                "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "norm_eps": 1e-05, "rope_theta": 500000.0}))
    with pytest.raises(UserError, match=r"params\.json: this looks like Meta's original Llama params\.json"):
        load_config(str(path))
