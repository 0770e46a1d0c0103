"""`hkllm plan --model PATH_OR_CONFIG --gpus N --gpu-mem GB [--offload]`: will full-parameter training fit?

Full fine-tuning with AdamW in mixed precision holds, per parameter: bf16 weights (2 bytes),
bf16 gradients (2), fp32 master weights (4) and two fp32 Adam moments (4 + 4): 16 bytes.
ZeRO-3 / FSDP shard all of it over the GPUs; with CPU offload the master weights and moments
(12 bytes) live in host memory instead. Activations are per GPU: with activation
checkpointing, each layer's input is kept (2 bytes × tokens × hidden) plus one layer's full
working set during recomputation (≈ 34 × tokens × hidden + 5 × heads × tokens × seq bytes,
Korthikanti et al. 2022). Parameters are counted by building the model on PyTorch's meta
device, so any Hugging Face architecture works, without downloading weights.

MODEL is a Hugging Face folder or id, a config.json, or a preset: deepseek-v3, qwen2.5-7b,
llama-3.1-8b, tiny (the embedded default).
"""

from __future__ import annotations

import json
from pathlib import Path

from hkllm.errors import UserError

GIB = 1024**3


def _presets():
    from transformers import DeepseekV3Config, LlamaConfig, Qwen2Config

    return {
        "deepseek-v3": DeepseekV3Config(),  # transformers' defaults are DeepSeek-V3's 671B shapes
        "qwen2.5-7b": Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                  num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
        "llama-3.1-8b": LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                    num_attention_heads=32, num_key_value_heads=8),
        "tiny": LlamaConfig(vocab_size=8000, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    }


# JSON model descriptions that are not Hugging Face configs, by the keys that give them away,
# and where the Hugging Face config of the same model is.
_FOREIGN_CONFIGS = (
    ({"dim", "n_layers", "n_heads", "n_routed_experts"}, "DeepSeek's inference config (inference/configs/*.json in "
     "the DeepSeek-V3 repository: dim, n_layers, n_routed_experts, ...)", "the config.json of the Hugging Face "
     "checkpoint (e.g. a download of deepseek-ai/DeepSeek-V3), or --model deepseek-v3 for its 671B shapes"),
    ({"dim", "n_layers", "n_heads", "norm_eps"}, "Meta's original Llama params.json", "the config.json of the "
     "Hugging Face checkpoint (e.g. meta-llama/Llama-3.1-8B), or --model llama-3.1-8b"),
)


def _not_hf_config(path: Path, data) -> str:
    """Why the JSON at `path` cannot be planned, and where the right file is."""
    if not isinstance(data, dict):
        return f"{path}: not a Hugging Face config.json (a JSON {type(data).__name__}, not an object)"
    for keys, what, instead in _FOREIGN_CONFIGS:
        if keys <= data.keys():
            return f"{path}: this looks like {what}, not a Hugging Face config.json; point --model at {instead}"
    shown = ", ".join(sorted(data)[:8]) + (", ..." if len(data) > 8 else "")
    return (f"{path}: not a Hugging Face config.json: it has no 'model_type' (keys: {shown or 'none'}); point --model at "
            "the config.json of a Hugging Face checkpoint, its folder, or a preset")


def _read_config_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"--model {path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise UserError(_not_hf_config(path, data))
    return data


def load_config(model: str):
    from transformers import AutoConfig

    presets = _presets()
    if model in presets:
        return presets[model]
    path = Path(model)
    try:
        if path.is_file():
            data = _read_config_json(path)
            return AutoConfig.for_model(data.pop("model_type"), **data)
        if (path / "config.json").is_file():
            _read_config_json(path / "config.json")  # the same explanation for a folder holding a foreign config
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--model {model!r}: not a preset ({', '.join(presets)}), config.json or model folder: {e}") from None


def count_parameters(config) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def estimate(config, params: int, gpus: int, gpu_mem_gb: float, offload: bool, seq_len: int, micro_batch: int) -> dict:
    per_gpu_states = (4 if offload else 16) * params / gpus
    tokens = seq_len * micro_batch
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    activations = 2 * tokens * hidden * layers + (34 * tokens * hidden + 5 * heads * tokens * seq_len)
    overhead = 2 * GIB  # CUDA context, NCCL buffers, fragmentation
    total = per_gpu_states + activations + overhead
    return {
        "parameters": params,
        "bytes_per_parameter": 16,
        "full_state_bytes": 16 * params,
        "per_gpu": {
            "weights_bf16": 2 * params / gpus, "gradients_bf16": 2 * params / gpus,
            "master_fp32": 0 if offload else 4 * params / gpus, "adam_moments_fp32": 0 if offload else 8 * params / gpus,
            "activations": activations, "overhead": overhead, "total": total,
        },
        "host_offload_bytes": 12 * params if offload else 0,
        "fits": total <= gpu_mem_gb * GIB,
    }


def render(model: str, e: dict, gpus: int, gpu_mem_gb: float, offload: bool) -> str:
    p = e["parameters"]
    g = e["per_gpu"]
    lines = [
        f"model {model}: {p / 1e9:,.2f}B parameters",
        f"full-parameter AdamW, mixed precision: 2 (bf16 weights) + 2 (bf16 grads) + 4 (fp32 master) + 4 + 4 "
        f"(Adam moments) = 16 bytes/parameter → {16 * p / 1e12:,.2f} TB of training state before activations",
        f"sharded over {gpus} GPUs (ZeRO-3 / FSDP){' with optimizer offload to CPU' if offload else ''}:",
        "",
        "| per GPU | GiB |", "|---|---:|",
    ]
    lines += [f"| {k} | {v / GIB:,.1f} |" for k, v in g.items()]
    if offload:
        lines.append(f"\nhost memory for offloaded master weights and moments: {e['host_offload_bytes'] / 1e12:,.2f} TB in total")
    verdict = "FITS" if e["fits"] else "DOES NOT FIT"
    lines.append(f"\n{verdict}: {g['total'] / GIB:,.1f} GiB needed per GPU, {gpu_mem_gb:,.0f} GiB available "
                 f"/ {'放得下' if e['fits'] else '放不下'}")
    if not e["fits"]:
        need = 16 * p / max(gpu_mem_gb * GIB - g["activations"] - g["overhead"], 1)
        lines.append(f"hint: without offload about {need:,.0f} GPUs of this size are needed for the training state; "
                     "or add --offload, shorten sequences, or use more GPUs")
    return "\n".join(lines)


def _run(args) -> int:
    config = load_config(args.model)
    params = count_parameters(config)
    e = estimate(config, params, args.gpus, args.gpu_mem, args.offload, args.seq_len, args.micro_batch)
    print(render(args.model, e, args.gpus, args.gpu_mem, args.offload))
    return 0 if e["fits"] else 1


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plan", help="estimate per-GPU memory for full-parameter training; does it fit?",
                              description=__doc__.split("\n\n", 1)[0] + "\n\n" + __doc__.split("\n\n", 1)[1],
                              epilog="example: hkllm plan --model deepseek-v3 --gpus 256 --gpu-mem 141 --offload")
    p.add_argument("--model", required=True, help="preset, config.json, or Hugging Face folder/id")
    p.add_argument("--gpus", type=int, required=True, help="number of GPUs the state is sharded over")
    p.add_argument("--gpu-mem", type=float, required=True, help="memory per GPU in GiB (e.g. 80 for H100, 141 for H200)")
    p.add_argument("--offload", action="store_true", help="offload fp32 master weights and Adam moments to CPU")
    p.add_argument("--seq-len", type=int, default=4096, help="sequence length (default 4096)")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per step (default 1)")
    p.set_defaults(func=_run)
