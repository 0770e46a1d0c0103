"""`hkllm export gguf MODEL_DIR --out FILE.gguf [--type f32|f16|q8_0]`: a model folder as one GGUF
file for llama.cpp, Ollama and LM Studio.

    hkllm export gguf runs/quickstart/dpo --out dpo.q8_0.gguf --type q8_0
    hkllm export gguf runs/smollm2/sft --out smollm2-hk.f16.gguf --type f16

Architectures: llama (hkllm's own models, SmolLM2, Llama) and qwen2; any other is one error.
The tokenizer must be byte-level BPE (hkllm's own, SmolLM2's, Qwen2's, Llama 3's): it is
written as tokenizer.ggml.model "gpt2" with its tokens, merges and token types, and the
pre-tokenizer name llama.cpp knows for its split rule ("gpt-2" for a plain byte-level split —
not "gpt2", which converts but does not load; "smollm", "qwen2", "llama-bpe"; --pre NAME
forces one). The chat template goes along (hkllm's training-only {% generation %} markers
removed; it renders the same), with the end-of-turn token as tokenizer.ggml.eot_token_id.
Q and K projections of llama are permuted into llama.cpp's rotary layout (as llama.cpp's
convert_hf_to_gguf.py does; transformers undoes it when it loads a GGUF). f16 and q8_0 keep
1-D tensors (norms, biases) in f32; q8_0 stores a matrix in f16 when its rows are not a
multiple of 32. The file is written beside FILE and renamed, so FILE is whole or absent.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from hkllm.errors import UserError

TYPES = ("f32", "f16", "q8_0")
ARCHITECTURES = {"llama": "LLAMA", "qwen2": "QWEN2"}
# Pre-tokenizer names llama.cpp's vocabulary loader accepts, by what their split rule looks like.
KNOWN_PRE = ("gpt-2", "smollm", "qwen2", "llama-bpe")
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "</s>")


def say(message: str) -> None:
    print(f"hkllm: {message}", flush=True)


def permute(weights, n_head: int, n_head_kv: int | None = None):
    """HF's rotary layout (halves) → llama.cpp's (interleaved pairs), per head; convert_hf_to_gguf's rule."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def strip_generation_markers(template: str) -> str:
    """{% generation %} / {% endgeneration %} only mark what to train on; other engines' Jinja may not know them."""
    return re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """The llama.cpp pre-tokenizer whose split rule is this tokenizer.json's (raises UserError if none is)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex", "")
        if r"\p{N}{1,3}" in pattern:
            return "llama-bpe"
        if r"\p{N}|" in pattern or r"\p{N}| ?" in pattern:
            return "qwen2"
    raise UserError(f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) matches none that llama.cpp knows here "
                    f"({', '.join(KNOWN_PRE)}); pass --pre NAME if you know its llama.cpp name / 未能辨認預分詞規則")


def _tokenizer_json(model_dir: Path) -> dict:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{model_dir}: no tokenizer.json (GGUF export needs a fast byte-level BPE tokenizer)")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    decoder = data.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") not in ("ByteLevel", None):
        raise UserError(f"{model_dir}: tokenizer is {model.get('type')} "
                        f"{'with byte fallback (SentencePiece-style)' if model.get('byte_fallback') else ''}; "
                        "GGUF export supports byte-level BPE only (hkllm's, SmolLM2's, Qwen2's, Llama 3's) / 不支援此分詞器")
    return data


def vocabulary(tokenizer, tokenizer_json: dict, vocab_size: int):
    """tokens, token types and merges as llama.cpp's "gpt2" tokenizer model wants them."""
    from gguf import TokenType

    vocab = tokenizer.get_vocab()   # includes added tokens
    by_id = {i: t for t, i in vocab.items()}
    if vocab_size < len(by_id) or max(by_id) >= vocab_size:
        raise UserError(f"tokenizer has {len(by_id)} tokens (largest id {max(by_id)}) but the model's vocab_size is {vocab_size}")
    added = {a["id"]: a for a in tokenizer_json.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"].get("merges", [])]
    return tokens, types, merges


def end_of_turn_id(tokenizer, template: str | None) -> int | None:
    """The end-of-turn token: the first known one that the chat template writes (else the eos)."""
    for token in END_OF_TURN:
        i = tokenizer.convert_tokens_to_ids(token)
        if i is not None and tokenizer.convert_ids_to_tokens(i) == token and template and token in template:
            return i
    return tokenizer.eos_token_id


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta or getattr(config, "rope_theta", None) or 10000.0)


def _check_rope(config) -> None:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"
    if kind not in ("default", None):
        raise UserError(f"rope scaling {kind!r} is not supported by hkllm's GGUF export (only unscaled rotary "
                        "embeddings); use llama.cpp's convert_hf_to_gguf.py for this model")


def _tensor_data(data, qtype: str):
    """(array, raw_dtype or None) for one tensor in the chosen file type."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if data.ndim <= 1 or qtype == "f32":
        return data.astype(np.float32), None
    if qtype == "q8_0" and data.shape[-1] % 32 == 0:
        return quantize(data.astype(np.float32), GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None


def export_gguf(model_dir: str, out: str, qtype: str = "f16", pre: str | None = None, force: bool = False) -> dict:
    started = time.time()
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF export needs the gguf package: pip install gguf==0.19.0") from None
    src, dest = Path(model_dir), Path(out)
    if qtype not in TYPES:
        raise UserError(f"--type {qtype}: choose one of {', '.join(TYPES)}")
    if not (src / "config.json").is_file():
        raise UserError(f"{model_dir}: not a model folder (no config.json)")
    if dest.exists() and not force:
        raise UserError(f"--out {out}: file exists (use --force to replace it)")
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UserError(f"{model_dir}: architecture {model_type!r} is not supported by hkllm's GGUF export "
                        f"(supported: {', '.join(ARCHITECTURES)}) / 不支援此模型架構")
    tok_json = _tokenizer_json(src)
    pre_name = pre or pre_tokenizer_name(tok_json)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(src)
    _check_rope(cfg)
    tokenizer = AutoTokenizer.from_pretrained(src)
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    if template:
        template = strip_generation_markers(template)
    else:
        say("warning: the model has no chat template; chat front-ends will guess one / 警告：沒有對話範本")

    say(f"loading {model_dir} ({model_type}) / 載入模型")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    n_head, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[model_type])
    name_map = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(src.resolve().name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(file_type)

    tokens, types, merges = vocabulary(tokenizer, tok_json, cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_name)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id
                             and len(probe) > 1)
    eot = end_of_turn_id(tokenizer, template)
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "eot": eot,
           "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id}
    for key, value in ids.items():
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(int(value))
    if template:
        writer.add_chat_template(template)

    counts: dict[str, int] = {}
    for key, data in state.items():
        if "rotary_emb" in key or (tied and key == "lm_head.weight"):
            continue
        if model_type == "llama":
            if key.endswith("self_attn.q_proj.weight"):
                data = permute(data, n_head, n_head)
            elif key.endswith("self_attn.k_proj.weight"):
                data = permute(data, n_head, n_kv)
        gguf_name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"{model_dir}: tensor {key} has no GGUF name for {model_type} (an unsupported variant?)")
        array, raw = _tensor_data(data, qtype)
        kind = raw.name if raw is not None else {"float32": "F32", "float16": "F16"}[array.dtype.name]
        counts[kind] = counts.get(kind, 0) + 1
        writer.add_tensor(gguf_name, array, raw_dtype=raw)
    del model, state

    say(f"writing {sum(counts.values())} tensors ({', '.join(f'{k}×{v}' for k, v in sorted(counts.items()))}) "
        f"to {dest} / 寫入 GGUF")
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    report = {"out": str(dest), "type": qtype, "architecture": model_type, "bytes": dest.stat().st_size,
              "tensor_types": counts, "tokenizer_pre": pre_name, "vocab_size": cfg.vocab_size,
              "chat_template": bool(template), "special_tokens": {k: v for k, v in ids.items() if v is not None},
              "seconds": round(time.time() - started, 1)}
    say(f"exported {dest} ({report['bytes'] / 2**20:,.1f} MiB, {qtype}, pre-tokenizer {pre_name!r}) in "
        f"{report['seconds']:.0f} s — llama.cpp: llama-cli -m {dest}; Ollama: a Modelfile with FROM {dest} / 匯出完成")
    return report


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a model: `export gguf` writes a GGUF file for llama.cpp/Ollama/LM Studio",
                              description="Export a model folder to another format.")
    sub = p.add_subparsers(dest="export_command", required=True, metavar="{gguf}")
    g = sub.add_parser("gguf", help="one GGUF file (f32, f16 or q8_0) with the tokenizer and chat template",
                       description=__doc__.split("\n\n", 2)[2],
                       epilog="example: hkllm export gguf runs/quickstart/dpo --out dpo.q8_0.gguf --type q8_0")
    g.add_argument("model_dir", metavar="MODEL_DIR", help="a Hugging Face model folder (hkllm train output, an import)")
    g.add_argument("--out", required=True, help="the .gguf file to write")
    g.add_argument("--type", default="f16", choices=TYPES, help="tensor type (default f16; 1-D tensors stay f32)")
    g.add_argument("--pre", default=None, help="force llama.cpp's pre-tokenizer name (default: detected)")
    g.add_argument("--force", action="store_true", help="replace --out if it exists")
    g.set_defaults(func=lambda a: export_gguf(a.model_dir, a.out, a.type, a.pre, a.force) and 0)
